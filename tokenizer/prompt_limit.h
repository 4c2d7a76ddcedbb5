#pragma once
// The byte cap on text prompts. No token stands for more than Tokenizer::max_bytes_per_token()
// bytes of text, so a text longer than context x that many bytes can never fit the context: it
// is refused before it is tokenized, which bounds the tokenizer's time and memory per request.
// Every text path (a gRPC prompt or chat, `hkv generate`) encodes through EncodePrompt. Pure
// functions; thread-safe.

#include <cstdint>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "tokenizer/tokenizer.h"

namespace hkv {

struct PromptByteLimit {
  int64_t max_bytes = 0;  // 0: no cap (the tokenizer has no bound and no flag set one).
  int32_t context_tokens = 0;
  int32_t bytes_per_token = 0;  // The tokenizer's bound; 0 when it has none.
  bool from_flag = false;       // max_prompt_bytes set the cap, below the derived one.
};

// The cap for a context of `context_tokens`: context x the tokenizer's bytes per token, or
// `max_prompt_bytes` when that is set (> 0) and lower.
PromptByteLimit MakePromptByteLimit(const Tokenizer& tokenizer, int32_t context_tokens,
                                    int64_t max_prompt_bytes);

// INVALID_ARGUMENT ("the prompt is N bytes; at most M for a context of C tokens ...") when
// `bytes` is over the cap.
absl::Status CheckPromptBytes(int64_t bytes, const PromptByteLimit& limit);

// CheckPromptBytes(text), then tokenizer.TryEncode(text, add_bos, control).
absl::StatusOr<std::vector<TokenId>> EncodePrompt(const Tokenizer& tokenizer, std::string_view text,
                                                  bool add_bos, const PromptByteLimit& limit,
                                                  const EncodeControl& control);

}  // namespace hkv
