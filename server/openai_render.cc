#include "server/openai_render.h"

#include "nlohmann/json.hpp"
#include "tokenizer/utf8.h"

namespace hkv {
namespace {

using Json = nlohmann::json;

std::string Dump(const Json& j) { return j.dump(-1, ' ', false, Json::error_handler_t::replace); }

bool IsChat(const OpenAiReplyInfo& info) { return info.endpoint == OpenAiEndpoint::kChat; }

Json Base(const OpenAiReplyInfo& info, bool chunk) {
  const char* object =
      IsChat(info) ? (chunk ? "chat.completion.chunk" : "chat.completion") : "text_completion";
  return {{"id", info.id}, {"object", object}, {"created", info.created}, {"model", info.model}};
}

Json UsageJson(const OpenAiUsage& u) {
  return {{"prompt_tokens", u.prompt_tokens},
          {"completion_tokens", u.completion_tokens},
          {"total_tokens", u.prompt_tokens + u.completion_tokens}};
}

Json FinishJson(FinishReason finish) {
  const char* name = OpenAiFinishReason(finish);
  return name == nullptr ? Json(nullptr) : Json(name);
}

Json BytesJson(const std::string& bytes) {
  Json list = Json::array();
  for (char ch : bytes) list.push_back(static_cast<int>(static_cast<unsigned char>(ch)));
  return list;
}

// Completions' {tokens, token_logprobs, top_logprobs: [{token: logprob}], text_offset}.
Json CompletionLogprobs(const std::vector<OpenAiLogprob>& logprobs) {
  Json tokens = Json::array(), values = Json::array(), tops = Json::array(),
       offsets = Json::array();
  for (const OpenAiLogprob& l : logprobs) {
    tokens.push_back(SanitizeUtf8(l.bytes));
    values.push_back(l.logprob);
    Json top = Json::object();
    // Two ids may render as one string: the more likely (first) one keeps the key.
    for (const OpenAiTopLogprob& t : l.top) top.emplace(SanitizeUtf8(t.bytes), t.logprob);
    tops.push_back(std::move(top));
    offsets.push_back(l.text_offset);
  }
  return {{"tokens", std::move(tokens)},
          {"token_logprobs", std::move(values)},
          {"top_logprobs", std::move(tops)},
          {"text_offset", std::move(offsets)}};
}

// Chat's {content: [{token, logprob, bytes, top_logprobs: [{token, logprob, bytes}]}]}.
Json ChatLogprobs(const std::vector<OpenAiLogprob>& logprobs) {
  Json content = Json::array();
  for (const OpenAiLogprob& l : logprobs) {
    Json top = Json::array();
    for (const OpenAiTopLogprob& t : l.top) {
      top.push_back({{"token", SanitizeUtf8(t.bytes)},
                     {"logprob", t.logprob},
                     {"bytes", BytesJson(t.bytes)}});
    }
    content.push_back({{"token", SanitizeUtf8(l.bytes)},
                       {"logprob", l.logprob},
                       {"bytes", BytesJson(l.bytes)},
                       {"top_logprobs", std::move(top)}});
  }
  return {{"content", std::move(content)}};
}

Json LogprobsJson(const OpenAiReplyInfo& info, const std::vector<OpenAiLogprob>* logprobs) {
  if (!info.logprobs || logprobs == nullptr) return nullptr;
  return IsChat(info) ? ChatLogprobs(*logprobs) : CompletionLogprobs(*logprobs);
}

}  // namespace

const char* OpenAiFinishReason(FinishReason finish) {
  switch (finish) {
    case FinishReason::kLength:
      return "length";
    case FinishReason::kStop:
    case FinishReason::kEos:
      return "stop";
    case FinishReason::kAborted:
    case FinishReason::kDeadline:
    case FinishReason::kError:
      return "abort";
    case FinishReason::kNone:
      break;
  }
  return nullptr;
}

std::string RenderResponse(const OpenAiReplyInfo& info, const std::vector<OpenAiChoice>& choices,
                           const OpenAiUsage& usage) {
  Json j = Base(info, /*chunk=*/false);
  Json list = Json::array();
  for (const OpenAiChoice& c : choices) {
    Json choice = {{"index", c.index},
                   {"logprobs", LogprobsJson(info, &c.logprobs)},
                   {"finish_reason", FinishJson(c.finish)}};
    if (IsChat(info)) {
      choice["message"] = {{"role", "assistant"}, {"content", c.text}};
    } else {
      choice["text"] = c.text;
    }
    list.push_back(std::move(choice));
  }
  j["choices"] = std::move(list);
  j["usage"] = UsageJson(usage);
  return Dump(j);
}

std::string RenderChunk(const OpenAiReplyInfo& info, int index, const std::string& text,
                        FinishReason finish, bool role, bool null_usage,
                        const std::vector<OpenAiLogprob>* logprobs) {
  Json j = Base(info, /*chunk=*/true);
  Json choice = {{"index", index},
                 {"logprobs", LogprobsJson(info, logprobs)},
                 {"finish_reason", FinishJson(finish)}};
  if (IsChat(info)) {
    Json delta = Json::object();
    if (role) delta["role"] = "assistant";
    if (role || !text.empty()) delta["content"] = text;
    choice["delta"] = std::move(delta);
  } else {
    choice["text"] = text;
  }
  j["choices"] = Json::array({std::move(choice)});
  if (null_usage) j["usage"] = nullptr;
  return Dump(j);
}

std::string RenderUsageChunk(const OpenAiReplyInfo& info, const OpenAiUsage& usage) {
  Json j = Base(info, /*chunk=*/true);
  j["choices"] = Json::array();
  j["usage"] = UsageJson(usage);
  return Dump(j);
}

std::string SseEvent(const std::string& json) { return "data: " + json + "\n\n"; }

std::string RenderError(int http_status, const std::string& message, const std::string& code) {
  const char* type = "invalid_request_error";
  if (http_status == 404) type = "not_found_error";
  if (http_status == 429) type = "rate_limit_error";
  if (http_status >= 500) type = http_status == 503 ? "service_unavailable" : "server_error";
  Json code_json = http_status;
  if (!code.empty()) code_json = code;
  return Dump(
      {{"error", {{"message", message}, {"type", type}, {"param", nullptr}, {"code", code_json}}}});
}

int HttpStatusOf(const absl::Status& status, bool at_submit) {
  switch (status.code()) {
    case absl::StatusCode::kOk:
      return 200;
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kOutOfRange:
    case absl::StatusCode::kFailedPrecondition:
    case absl::StatusCode::kUnimplemented:
    case absl::StatusCode::kAlreadyExists:
      return 400;
    case absl::StatusCode::kNotFound:
      return 404;
    case absl::StatusCode::kResourceExhausted:
      return at_submit ? 429 : 400;
    case absl::StatusCode::kUnavailable:
      return 503;
    case absl::StatusCode::kDeadlineExceeded:
      return 408;
    case absl::StatusCode::kUnauthenticated:
      return 401;
    case absl::StatusCode::kPermissionDenied:
      return 403;
    default:
      return 500;
  }
}

}  // namespace hkv
