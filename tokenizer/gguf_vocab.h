#pragma once
// Reads the tokenizer metadata of a GGUF file (llama.cpp's format): the vocabulary, scores,
// token types and BPE merges under `tokenizer.ggml.*`. Tensors are not read. Thread-safe (pure).

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace hkv {

struct GgufVocab {
  std::string model;  // "gpt2" (byte-level BPE) or "llama" (SentencePiece BPE).
  std::string pre;    // Pre-tokenizer name: "llama-bpe", "qwen2", "default", ...
  std::vector<std::string> tokens;
  std::vector<float> scores;       // SentencePiece scores (empty for gpt2).
  std::vector<int32_t> token_types;  // 1 normal, 2 unknown, 3 control, 4 user, 6 byte.
  std::vector<std::string> merges;   // "left right", highest priority first.
  int32_t bos_id = -1;
  int32_t eos_id = -1;
  int32_t unknown_id = -1;
  bool add_space_prefix = true;
};

// INVALID_ARGUMENT naming the problem for a file that is not GGUF v2/v3, is truncated, or has
// no tokenizer vocabulary; NOT_FOUND when missing.
absl::StatusOr<GgufVocab> LoadGgufVocab(const std::string& path);

}  // namespace hkv
