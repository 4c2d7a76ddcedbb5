#pragma once
// Loader for llama2.c's legacy checkpoint format (Karpathy's llama2.c `run.c`).
//
//   header: 7 x int32  dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len
//           (vocab_size < 0 means a separate classifier follows; > 0: shared with embedding)
//   float32: token_embedding [vocab, dim], rms_att [L, dim], wq [L, dim, dim],
//            wk [L, kv_dim, dim], wv [L, kv_dim, dim], wo [L, dim, dim], rms_ffn [L, dim],
//            w1 [L, hidden, dim], w2 [L, dim, hidden], w3 [L, hidden, dim], rms_final [dim],
//            freq_cis_real [seq_len, head_size/2], freq_cis_imag (unused), wcls [vocab, dim]?
//
// Thread-safe: a pure function of the file.

#include <string>

#include "absl/status/statusor.h"
#include "model/model_config.h"

namespace hkv {

// Loads the checkpoint at `path`. INVALID_ARGUMENT (naming the problem) for a truncated file,
// an impossible header, or a size that does not match the header; NOT_FOUND if missing.
absl::StatusOr<Model> LoadLlama2cCheckpoint(const std::string& path);

}  // namespace hkv
