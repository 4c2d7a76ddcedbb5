#pragma once
// Added tokens (Hugging Face's added_tokens, e.g. "<|eot_id|>") found verbatim in the text
// before BPE runs. A byte trie finds the one at a position in time linear in the longest
// match, instead of comparing every added token at every byte (Llama-3 has 256 of them).
// Immutable after construction; thread-safe.

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "tokenizer/bpe_merge.h"

namespace hkv {

class AddedTokens {
 public:
  // Empty texts in `added` never match.
  explicit AddedTokens(std::vector<std::pair<std::string, TokenId>> added);

  // Of the added tokens that `text` has at `at`, the index (in the constructor's list) of the
  // first one in that list; -1 when none.
  int32_t FirstAt(std::string_view text, size_t at) const;

  // Appends added tokens' ids to `out` and calls `encode` on each non-empty stretch of text
  // between them, in order; stops at the first error of `encode` or `checker`.
  absl::Status Split(std::string_view text, EncodeChecker* checker, std::vector<TokenId>* out,
                     absl::FunctionRef<absl::Status(std::string_view)> encode) const;

 private:
  std::vector<std::pair<std::string, TokenId>> added_;
  absl::flat_hash_map<uint64_t, int32_t> edges_;  // (node << 8) | byte -> child node.
  std::vector<int32_t> first_;  // Per node: the first added token spelled by its path, or -1.
};

}  // namespace hkv
