#pragma once
// The two BPE families of Hugging Face / llama.cpp vocabularies:
//
// - Byte-level BPE (GPT-2 style; Llama-3, Qwen2): a regex pre-tokenizer splits the text, each
//   piece's bytes are mapped to printable code points (GPT-2's bytes_to_unicode), then ranked
//   merges apply within the piece. Llama-3 looks a whole piece up first (ignore_merges).
// - SentencePiece BPE (Llama-2, Mistral): spaces become U+2581 (with a leading one when
//   add_space_prefix), characters merge by highest piece score, and characters outside the
//   vocabulary fall back to <0xXX> byte tokens.
//
// Both are immutable after construction and thread-safe.

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "tokenizer/gguf_vocab.h"
#include "tokenizer/tokenizer.h"

namespace hkv {

// The pre-tokenizer regex (PCRE2 syntax) for a llama.cpp pre-tokenizer name ("llama-bpe" /
// "llama3", "qwen2"); INVALID_ARGUMENT for others.
absl::StatusOr<std::string> PreTokenizerPattern(const std::string& name);

struct BpeVocab {
  std::vector<std::string> tokens;   // Byte-level (gpt2) or U+2581 (spm) piece strings.
  std::vector<float> scores;         // SentencePiece scores (spm only).
  std::vector<int32_t> token_types;  // 3 = control (no text when decoding); may be empty.
  std::vector<std::string> merges;   // "left right" by priority (byte-level only).
  std::string pattern;               // Pre-tokenizer regex (byte-level only).
  bool ignore_merges = false;        // Byte-level: whole pieces found in the vocab win.
  bool add_space_prefix = true;      // SentencePiece.
  TokenId bos_id = -1;
  std::vector<TokenId> eos_ids;
  // Added tokens matched verbatim in the text before BPE (Hugging Face's added_tokens, e.g.
  // "<|eot_id|>" in a chat prompt), longest first. Empty: special text is not parsed.
  std::vector<std::pair<std::string, TokenId>> added;
};

absl::StatusOr<std::unique_ptr<Tokenizer>> MakeByteLevelBpeTokenizer(BpeVocab vocab);
absl::StatusOr<std::unique_ptr<Tokenizer>> MakeSentencePieceBpeTokenizer(BpeVocab vocab);

// Builds the right tokenizer for a GGUF vocabulary (model "gpt2" or "llama").
absl::StatusOr<std::unique_ptr<Tokenizer>> MakeTokenizerFromGguf(const GgufVocab& vocab);

}  // namespace hkv
