#pragma once
// The tokenizer of llama2.c checkpoints (`tokenizer.bin` / `tok512.bin`): a SentencePiece BPE
// vocabulary exported as
//
//   int32 max_token_length, then per token: float32 score, int32 length, `length` bytes.
//
// Encoding follows llama2.c's run.c: a dummy-prefix space, one token per UTF-8 character (or
// `<0xXX>` byte-fallback tokens, id = byte + 3), then repeated merges of the adjacent pair whose
// merged piece has the highest score. BOS = 1, EOS = 2. Immutable after loading; thread-safe.

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "tokenizer/tokenizer.h"

namespace hkv {

// Loads `vocab_size` tokens from `path`. INVALID_ARGUMENT for a truncated or malformed file.
absl::StatusOr<std::unique_ptr<Tokenizer>> LoadLlama2cTokenizer(const std::string& path,
                                                                int32_t vocab_size);

}  // namespace hkv
