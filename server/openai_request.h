#pragma once
// The OpenAI-compatible API's requests: a JSON body of POST /v1/completions or
// /v1/chat/completions parsed into OpenAiRequest (types checked, sizes bounded), and that turned
// into EngineRequests (prompts tokenized, chats rendered by the model's ChatTemplate). Unknown
// fields are ignored, as OpenAI does; a field of the wrong type is INVALID_ARGUMENT naming it.
// Fields parsed but not served yet are refused by one table (kPendingFeatures in the .cc) only
// when their value would need them (echo, best_of other than n).
//
// Pure functions; thread-safe.

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "common/ids.h"
#include "server/engine.h"
#include "server/stop_strings.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/prompt_limit.h"
#include "tokenizer/tokenizer.h"

namespace hkv {

enum class OpenAiEndpoint { kCompletions, kChat };

// One prompt of a completions request: text, or token ids.
struct OpenAiPrompt {
  std::string text;
  std::vector<TokenId> ids;
  bool is_ids = false;
};

struct OpenAiRequest {
  OpenAiEndpoint endpoint = OpenAiEndpoint::kCompletions;
  std::string model;                  // Empty: the server's first served name.
  std::vector<OpenAiPrompt> prompts;  // Completions: one choice per prompt.
  std::vector<ChatMessage> messages;  // Chat.
  bool add_generation_prompt = true;  // Chat (vLLM's extra).
  std::optional<int64_t> max_tokens;  // max_tokens, or max_completion_tokens.
  std::optional<double> temperature;
  std::optional<double> top_p;
  std::optional<int64_t> top_k;  // -1 or 0: no cut (vLLM's -1).
  std::optional<int64_t> seed;
  std::vector<std::string> stop;
  std::vector<TokenId> stop_token_ids;
  bool ignore_eos = false;
  int64_t priority = 0;
  bool stream = false;
  bool include_usage = false;  // stream_options.include_usage
  // hkv's extra body field kv_policy {name, budget, beta}.
  std::string kv_policy;
  int64_t kv_budget = 0;
  double kv_beta = 0;
  int64_t n = 1;  // Samples per prompt (choices prompt_index * n + sample).
  // Chat's logprobs, or completions' logprobs present (any value); top_logprobs is chat's
  // top_logprobs or completions' logprobs value, in [0, kMaxTopLogprobs].
  bool logprobs = false;
  int64_t top_logprobs = 0;
  // Parsed but not served yet (see kPendingFeatures); defaults are what needs nothing.
  std::optional<int64_t> best_of;
  bool echo = false;
  double presence_penalty = 0;
  double frequency_penalty = 0;
  double repetition_penalty = 1;
  double min_p = 0;
  int64_t min_tokens = 0;
};

struct OpenAiParseLimits {
  int max_prompts = 64;     // Prompts in one completions request (a list of them).
  int max_messages = 4096;  // Messages in one chat.
  int max_json_depth = 32;  // Nesting of the body's arrays and objects.
  StopLimits stop_limits;
};

// Parses and checks a request body. INVALID_ARGUMENT: not JSON, not an object, nested too deep,
// a field of the wrong type or out of range, a missing prompt/messages, list sizes past
// `limits`, or a value that needs a feature this server does not have yet.
absl::StatusOr<OpenAiRequest> ParseOpenAiRequest(std::string_view body, OpenAiEndpoint endpoint,
                                                 const OpenAiParseLimits& limits);

// What converting a request needs from the server.
struct OpenAiServing {
  const Tokenizer* tokenizer = nullptr;  // Null: token-id prompts only.
  const ChatTemplate* chat = nullptr;    // Null: chat is refused.
  PromptByteLimit prompt_limit;
  int32_t max_model_len = 0;
};

// The rendered chat prompt's text. INVALID_ARGUMENT without a chat template, with no messages, or
// past the prompt byte cap; the template's own errors as it returns them.
absl::StatusOr<std::string> RenderChat(const std::vector<ChatMessage>& messages,
                                       bool add_generation_prompt, const OpenAiServing& serving);

// One EngineRequest per prompt (one for a chat), each drawing `n` samples. Completions default to
// 16 tokens (OpenAI's default), chats to what is left of the context after the prompt.
absl::StatusOr<std::vector<EngineRequest>> ToEngineRequests(const OpenAiRequest& request,
                                                            const OpenAiServing& serving,
                                                            const EncodeControl& control);

}  // namespace hkv
