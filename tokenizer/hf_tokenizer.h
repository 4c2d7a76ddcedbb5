#pragma once
// Loads a Hugging Face tokenizer from a model directory: `tokenizer.json` (a BPE model, either
// byte-level with a Split-regex pre-tokenizer (Llama-3, Qwen2) or SentencePiece-style with
// Metaspace / Replace(" " -> U+2581) and byte fallback (Llama-2, Mistral)), its added tokens,
// and BOS/EOS from tokenizer_config.json and generation_config.json (EOS may be a list).
// Unigram / WordPiece models are rejected with a clear error. Thread-safe once loaded.

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "tokenizer/tokenizer.h"

namespace hkv {

// NOT_FOUND when `dir`/tokenizer.json is missing; INVALID_ARGUMENT naming what is malformed or
// unsupported.
absl::StatusOr<std::unique_ptr<Tokenizer>> LoadHfTokenizer(const std::string& dir);

// Same from the JSON texts (tokenizer_config / generation_config may be empty).
absl::StatusOr<std::unique_ptr<Tokenizer>> ParseHfTokenizer(const std::string& tokenizer_json,
                                                            const std::string& tokenizer_config,
                                                            const std::string& generation_config);

}  // namespace hkv
