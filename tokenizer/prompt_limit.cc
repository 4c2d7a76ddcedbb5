#include "tokenizer/prompt_limit.h"

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace hkv {

PromptByteLimit MakePromptByteLimit(const Tokenizer& tokenizer, int32_t context_tokens,
                                    int64_t max_prompt_bytes) {
  PromptByteLimit limit;
  limit.context_tokens = context_tokens;
  limit.bytes_per_token = tokenizer.max_bytes_per_token();
  if (limit.bytes_per_token > 0) {
    limit.max_bytes = int64_t{context_tokens} * limit.bytes_per_token;
  }
  if (max_prompt_bytes > 0 && (limit.max_bytes == 0 || max_prompt_bytes < limit.max_bytes)) {
    limit.max_bytes = max_prompt_bytes;
    limit.from_flag = true;
  }
  return limit;
}

absl::Status CheckPromptBytes(int64_t bytes, const PromptByteLimit& limit) {
  if (limit.max_bytes == 0 || bytes <= limit.max_bytes) return absl::OkStatus();
  const std::string context = absl::StrCat(" for a context of ", limit.context_tokens, " tokens");
  return absl::InvalidArgumentError(
      absl::StrCat("the prompt is ", bytes, " bytes; at most ", limit.max_bytes,
                   limit.from_flag ? absl::StrCat(" (max_prompt_bytes)", context)
                                   : absl::StrCat(context, " (no token stands for more than ",
                                                  limit.bytes_per_token, " bytes)"),
                   ": shorten the prompt"));
}

absl::StatusOr<std::vector<TokenId>> EncodePrompt(const Tokenizer& tokenizer, std::string_view text,
                                                  bool add_bos, const PromptByteLimit& limit,
                                                  const EncodeControl& control) {
  HKV_RETURN_IF_ERROR(CheckPromptBytes(static_cast<int64_t>(text.size()), limit));
  return tokenizer.TryEncode(text, add_bos, control);
}

}  // namespace hkv
