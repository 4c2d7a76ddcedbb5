#pragma once
// The OpenAI-compatible API's responses: completion and chat objects, their streamed chunks as
// server-sent events, usage, error objects, and the HTTP status of an absl::Status. Text is
// always valid UTF-8 (the OutputProcessor repairs it); other strings are made valid by
// replacing bad bytes.
//
// Pure functions; thread-safe.

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "common/finish_reason.h"
#include "server/openai_request.h"

namespace hkv {

// What every object of one response shares.
struct OpenAiReplyInfo {
  OpenAiEndpoint endpoint = OpenAiEndpoint::kCompletions;
  std::string id;  // "cmpl-..." or "chatcmpl-...".
  int64_t created = 0;
  std::string model;
  bool logprobs = false;  // The request asked for logprobs: choices carry them, else null.
};

// One generated token's log-probability and its most likely alternatives, for the reply's
// `logprobs`. Token strings are rendered as SanitizeUtf8(bytes); chat's `bytes` are the raw ones.
struct OpenAiTopLogprob {
  std::string bytes;
  float logprob = 0;
};
struct OpenAiLogprob {
  std::string bytes;
  float logprob = 0;
  int64_t text_offset = 0;            // Completions: where the token starts in the choice's text.
  std::vector<OpenAiTopLogprob> top;  // By logprob descending.
};

struct OpenAiUsage {
  int64_t prompt_tokens = 0;
  int64_t completion_tokens = 0;
};

struct OpenAiChoice {
  int index = 0;
  std::string text;
  FinishReason finish = FinishReason::kNone;
  std::vector<OpenAiLogprob> logprobs;  // Rendered when the request asked (info.logprobs).
};

// "stop" (stop string, stop token or EOS), "length", "abort"; null while running.
const char* OpenAiFinishReason(FinishReason finish);

// The whole (non-streamed) response object.
std::string RenderResponse(const OpenAiReplyInfo& info, const std::vector<OpenAiChoice>& choices,
                           const OpenAiUsage& usage);

// One streamed chunk of choice `index`: `text` as its delta, and its finish reason once it
// ended. `role` adds the chat delta's {"role": "assistant"}; `null_usage` adds "usage": null
// (stream_options.include_usage asks for it on every chunk but the last). `logprobs` are the
// chunk's tokens' (rendered when info.logprobs; null means none).
std::string RenderChunk(const OpenAiReplyInfo& info, int index, const std::string& text,
                        FinishReason finish, bool role, bool null_usage,
                        const std::vector<OpenAiLogprob>* logprobs = nullptr);
// The last chunk under include_usage: no choices, the usage of the whole request.
std::string RenderUsageChunk(const OpenAiReplyInfo& info, const OpenAiUsage& usage);

// `json` as one server-sent event ("data: ...\n\n"), and the stream's end.
std::string SseEvent(const std::string& json);
inline constexpr char kSseDone[] = "data: [DONE]\n\n";

// An OpenAI error object {"error": {message, type, param, code}}; `code` is the HTTP status
// unless a string code is given (OpenAI's "invalid_api_key").
std::string RenderError(int http_status, const std::string& message, const std::string& code = "");

// The HTTP status of a failed request: 400 bad request, 404 not found (an unknown model),
// 429 (RESOURCE_EXHAUSTED when `at_submit`: the queue is full), 503 (UNAVAILABLE: draining or
// stopped), 500 (INTERNAL and anything unexpected). RESOURCE_EXHAUSTED later (a request that can
// never fit the pool) and UNIMPLEMENTED (a policy this device cannot run) are 400.
int HttpStatusOf(const absl::Status& status, bool at_submit);

}  // namespace hkv
