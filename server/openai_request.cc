#include "server/openai_request.h"

#include <cmath>
#include <limits>

#include "absl/strings/str_cat.h"
#include "common/quote.h"
#include "common/sampling_params.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"

namespace hkv {
namespace {

using Json = nlohmann::json;

// A field that parses but needs an engine feature this server does not have yet: a request
// whose value needs it is refused with 400. Serving one is removing its line here and mapping
// the field into SamplingParams in ToEngineRequests.
struct PendingFeature {
  const char* field;
  bool (*needed)(const OpenAiRequest&);
};
constexpr PendingFeature kPendingFeatures[] = {
    // best_of candidates beyond the n returned would need server-side ranking.
    {"best_of", [](const OpenAiRequest& r) { return r.best_of.value_or(r.n) != r.n; }},
    {"echo", [](const OpenAiRequest& r) { return r.echo; }},
};

absl::Status TypeError(absl::string_view field, absl::string_view expected) {
  return absl::InvalidArgumentError(absl::StrCat("`", field, "` must be ", expected));
}

// The deepest nesting of arrays and objects in `body` (strings skipped), stopping past `limit`.
int JsonDepth(std::string_view body, int limit) {
  int depth = 0, deepest = 0;
  bool in_string = false, escaped = false;
  for (char ch : body) {
    if (in_string) {
      if (escaped) {
        escaped = false;
      } else if (ch == '\\') {
        escaped = true;
      } else if (ch == '"') {
        in_string = false;
      }
      continue;
    }
    if (ch == '"') in_string = true;
    if (ch == '[' || ch == '{') deepest = std::max(deepest, ++depth);
    if (ch == ']' || ch == '}') --depth;
    if (deepest > limit) break;
  }
  return deepest;
}

// Absent or null leaves `out` as is. An integer field takes integral floats (2.0) too, as
// OpenAI's own server does.
absl::Status GetInt(const Json& j, const char* key, int64_t* out) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return absl::OkStatus();
  if (it->is_number_integer()) {
    if (it->is_number_unsigned() &&
        it->get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      return TypeError(key, "an integer within 64 bits");
    }
    *out = it->get<int64_t>();
    return absl::OkStatus();
  }
  if (it->is_number_float()) {
    const double v = it->get<double>();
    if (std::trunc(v) == v && std::fabs(v) < 9.0e15) {
      *out = static_cast<int64_t>(v);
      return absl::OkStatus();
    }
  }
  return TypeError(key, "an integer");
}

absl::Status GetInt(const Json& j, const char* key, std::optional<int64_t>* out) {
  int64_t v = 0;
  if (auto it = j.find(key); it == j.end() || it->is_null()) return absl::OkStatus();
  HKV_RETURN_IF_ERROR(GetInt(j, key, &v));
  *out = v;
  return absl::OkStatus();
}

absl::Status GetNumber(const Json& j, const char* key, double* out) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return absl::OkStatus();
  if (!it->is_number()) return TypeError(key, "a number");
  *out = it->get<double>();
  if (!std::isfinite(*out)) return TypeError(key, "a finite number");
  return absl::OkStatus();
}

absl::Status GetNumber(const Json& j, const char* key, std::optional<double>* out) {
  double v = 0;
  if (auto it = j.find(key); it == j.end() || it->is_null()) return absl::OkStatus();
  HKV_RETURN_IF_ERROR(GetNumber(j, key, &v));
  *out = v;
  return absl::OkStatus();
}

absl::Status GetBool(const Json& j, const char* key, bool* out) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return absl::OkStatus();
  if (!it->is_boolean()) return TypeError(key, "true or false");
  *out = it->get<bool>();
  return absl::OkStatus();
}

absl::Status GetString(const Json& j, const char* key, std::string* out) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return absl::OkStatus();
  if (!it->is_string()) return TypeError(key, "a string");
  *out = it->get<std::string>();
  return absl::OkStatus();
}

// A token id list: integers in [0, 2^31).
absl::Status GetIds(const Json& j, absl::string_view field, std::vector<TokenId>* out) {
  for (const Json& v : j) {
    if (!v.is_number_integer() || v.get<int64_t>() < 0 ||
        v.get<int64_t>() > std::numeric_limits<TokenId>::max()) {
      return TypeError(field, "a list of non-negative integer token ids");
    }
    out->push_back(static_cast<TokenId>(v.get<int64_t>()));
  }
  return absl::OkStatus();
}

bool IsIdList(const Json& j) { return j.is_array() && !j.empty() && j[0].is_number(); }

absl::Status ParsePrompt(const Json& body, const OpenAiParseLimits& limits, OpenAiRequest* r) {
  auto it = body.find("prompt");
  if (it == body.end() || it->is_null()) {
    return absl::InvalidArgumentError(
        "`prompt` is required: a string, a list of strings, "
        "a list of token ids, or a list of such lists");
  }
  const Json& p = *it;
  if (p.is_string()) {
    r->prompts.push_back({p.get<std::string>(), {}, false});
  } else if (IsIdList(p)) {
    OpenAiPrompt prompt;
    prompt.is_ids = true;
    HKV_RETURN_IF_ERROR(GetIds(p, "prompt", &prompt.ids));
    r->prompts.push_back(std::move(prompt));
  } else if (p.is_array() && !p.empty()) {
    if (static_cast<int64_t>(p.size()) > limits.max_prompts) {
      return absl::InvalidArgumentError(
          absl::StrCat("`prompt` lists ", p.size(), " prompts; at most ", limits.max_prompts));
    }
    for (const Json& e : p) {
      OpenAiPrompt prompt;
      if (e.is_string()) {
        prompt.text = e.get<std::string>();
      } else if (IsIdList(e)) {
        prompt.is_ids = true;
        HKV_RETURN_IF_ERROR(GetIds(e, "prompt", &prompt.ids));
      } else {
        return TypeError("prompt",
                         "a string, a list of strings, a list of token ids, or a "
                         "list of non-empty token-id lists");
      }
      r->prompts.push_back(std::move(prompt));
    }
  } else {
    return TypeError("prompt", "a non-empty string, list of strings or list of token ids");
  }
  return absl::OkStatus();
}

// `content`: a string, null, or a list of {"type": "text", "text": ...} parts (joined).
absl::Status ParseContent(const Json& m, std::string* out) {
  auto it = m.find("content");
  if (it == m.end() || it->is_null()) return absl::OkStatus();
  if (it->is_string()) {
    *out = it->get<std::string>();
    return absl::OkStatus();
  }
  if (!it->is_array()) return TypeError("messages[].content", "a string or a list of parts");
  for (const Json& part : *it) {
    if (!part.is_object()) return TypeError("messages[].content[]", "an object");
    auto type = part.find("type");
    if (type == part.end() || !type->is_string()) {
      return TypeError("messages[].content[].type", "a string");
    }
    if (type->get<std::string>() != "text") {
      return absl::InvalidArgumentError(
          absl::StrCat("content parts of type ", QuoteForError(type->get<std::string>()),
                       " are not supported by this server (text only)"));
    }
    auto text = part.find("text");
    if (text == part.end() || !text->is_string()) {
      return TypeError("messages[].content[].text", "a string");
    }
    *out += text->get<std::string>();
  }
  return absl::OkStatus();
}

absl::Status ParseMessages(const Json& body, const OpenAiParseLimits& limits, OpenAiRequest* r) {
  auto it = body.find("messages");
  if (it == body.end() || !it->is_array() || it->empty()) {
    return TypeError("messages", "a non-empty list of {role, content} objects");
  }
  if (static_cast<int64_t>(it->size()) > limits.max_messages) {
    return absl::InvalidArgumentError(
        absl::StrCat("`messages` has ", it->size(), " messages; at most ", limits.max_messages));
  }
  for (const Json& m : *it) {
    if (!m.is_object()) return TypeError("messages[]", "an object");
    ChatMessage message;
    auto role = m.find("role");
    if (role == m.end() || !role->is_string()) return TypeError("messages[].role", "a string");
    message.role = role->get<std::string>();
    HKV_RETURN_IF_ERROR(ParseContent(m, &message.content));
    r->messages.push_back(std::move(message));
  }
  return GetBool(body, "add_generation_prompt", &r->add_generation_prompt);
}

absl::Status ParseStops(const Json& body, const OpenAiParseLimits& limits, OpenAiRequest* r) {
  if (auto it = body.find("stop"); it != body.end() && !it->is_null()) {
    if (it->is_string()) {
      r->stop.push_back(it->get<std::string>());
    } else if (it->is_array()) {
      HKV_RETURN_IF_ERROR(CheckStopLimits(limits.stop_limits, it->size(), 0, 0));
      for (const Json& s : *it) {
        if (!s.is_string()) return TypeError("stop", "a string or a list of strings");
        r->stop.push_back(s.get<std::string>());
      }
    } else {
      return TypeError("stop", "a string or a list of strings");
    }
  }
  if (auto it = body.find("stop_token_ids"); it != body.end() && !it->is_null()) {
    if (!it->is_array()) return TypeError("stop_token_ids", "a list of token ids");
    HKV_RETURN_IF_ERROR(CheckStopLimits(limits.stop_limits, 0, 0, it->size()));
    HKV_RETURN_IF_ERROR(GetIds(*it, "stop_token_ids", &r->stop_token_ids));
  }
  return CheckStopLimits(limits.stop_limits, r->stop, r->stop_token_ids.size());
}

absl::Status ParseKvPolicy(const Json& body, OpenAiRequest* r) {
  auto it = body.find("kv_policy");
  if (it == body.end() || it->is_null()) return absl::OkStatus();
  if (it->is_string()) {  // A bare name.
    r->kv_policy = it->get<std::string>();
    return absl::OkStatus();
  }
  if (!it->is_object()) return TypeError("kv_policy", "an object {name, budget, beta}");
  HKV_RETURN_IF_ERROR(GetString(*it, "name", &r->kv_policy));
  HKV_RETURN_IF_ERROR(GetInt(*it, "budget", &r->kv_budget));
  HKV_RETURN_IF_ERROR(GetNumber(*it, "beta", &r->kv_beta));
  return absl::OkStatus();
}

// OpenAI fields that change what a reply means but that this server does not apply: silently
// ignoring them (as unknown fields are) would hand back a different answer than the client
// asked for, so a non-neutral value is a 400. Neutral values (null, {}, "", [], "none",
// {"type": "text"}) pass.
absl::Status RefuseUnservedFields(const Json& body) {
  for (const char* field :
       {"logit_bias", "suffix", "response_format", "tools", "tool_choice", "functions",
        "function_call"}) {
    auto it = body.find(field);
    if (it == body.end() || it->is_null()) continue;
    const bool neutral = (it->is_object() && it->empty()) || (it->is_array() && it->empty()) ||
                         (it->is_string() && (it->get_ref<const std::string&>().empty() ||
                                              *it == "none")) ||
                         (it->is_object() && it->size() == 1 && it->contains("type") &&
                          (*it)["type"] == "text");
    if (!neutral) {
      return absl::InvalidArgumentError(
          absl::StrCat("`", field, "` is not supported by this server"));
    }
  }
  return absl::OkStatus();
}

// The sampling fields, the pending ones included.
absl::Status ParseSampling(const Json& body, OpenAiRequest* r) {
  HKV_RETURN_IF_ERROR(GetInt(body, "max_tokens", &r->max_tokens));
  HKV_RETURN_IF_ERROR(GetInt(body, "max_completion_tokens", &r->max_tokens));
  HKV_RETURN_IF_ERROR(GetNumber(body, "temperature", &r->temperature));
  HKV_RETURN_IF_ERROR(GetNumber(body, "top_p", &r->top_p));
  HKV_RETURN_IF_ERROR(GetInt(body, "top_k", &r->top_k));
  HKV_RETURN_IF_ERROR(GetInt(body, "seed", &r->seed));
  HKV_RETURN_IF_ERROR(GetBool(body, "ignore_eos", &r->ignore_eos));
  HKV_RETURN_IF_ERROR(GetInt(body, "priority", &r->priority));
  HKV_RETURN_IF_ERROR(GetInt(body, "n", &r->n));
  HKV_RETURN_IF_ERROR(GetInt(body, "best_of", &r->best_of));
  HKV_RETURN_IF_ERROR(GetBool(body, "echo", &r->echo));
  HKV_RETURN_IF_ERROR(GetNumber(body, "presence_penalty", &r->presence_penalty));
  HKV_RETURN_IF_ERROR(GetNumber(body, "frequency_penalty", &r->frequency_penalty));
  HKV_RETURN_IF_ERROR(GetNumber(body, "repetition_penalty", &r->repetition_penalty));
  HKV_RETURN_IF_ERROR(GetNumber(body, "min_p", &r->min_p));
  HKV_RETURN_IF_ERROR(GetInt(body, "min_tokens", &r->min_tokens));
  HKV_RETURN_IF_ERROR(GetInt(body, "top_logprobs", &r->top_logprobs));
  if (r->endpoint == OpenAiEndpoint::kChat) {
    HKV_RETURN_IF_ERROR(GetBool(body, "logprobs", &r->logprobs));
  } else {
    // Completions' logprobs is the number of alternatives; present (even 0) means "on".
    std::optional<int64_t> logprobs;
    HKV_RETURN_IF_ERROR(GetInt(body, "logprobs", &logprobs));
    r->logprobs = logprobs.has_value();
    if (logprobs.has_value()) {
      if (r->top_logprobs != 0) {
        return absl::InvalidArgumentError(
            "`top_logprobs` is a chat field: completions take the count as `logprobs`");
      }
      r->top_logprobs = *logprobs;
    }
  }
  if (r->top_logprobs < 0 || r->top_logprobs > kMaxTopLogprobs) {
    return absl::InvalidArgumentError(
        absl::StrCat("`", r->endpoint == OpenAiEndpoint::kChat ? "top_logprobs" : "logprobs",
                     "` must be in [0, ", kMaxTopLogprobs, "], got ", r->top_logprobs));
  }
  if (r->top_logprobs != 0 && !r->logprobs) {
    return absl::InvalidArgumentError("`top_logprobs` needs `logprobs` set to true");
  }
  if (r->max_tokens.has_value() && *r->max_tokens < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("`max_tokens` must be at least 1, got ", *r->max_tokens));
  }
  if (r->n < 1 || r->n > std::numeric_limits<int32_t>::max()) {
    return absl::InvalidArgumentError(absl::StrCat("`n` must be at least 1, got ", r->n));
  }
  if (r->min_tokens < 0 || r->min_tokens > std::numeric_limits<int32_t>::max()) {
    return absl::InvalidArgumentError(
        absl::StrCat("`min_tokens` must be >= 0, got ", r->min_tokens));
  }
  if (r->priority < std::numeric_limits<int32_t>::min() ||
      r->priority > std::numeric_limits<int32_t>::max()) {
    return TypeError("priority", "a 32-bit integer");
  }
  return absl::OkStatus();
}

absl::Status ParseStream(const Json& body, OpenAiRequest* r) {
  HKV_RETURN_IF_ERROR(GetBool(body, "stream", &r->stream));
  auto it = body.find("stream_options");
  if (it == body.end() || it->is_null()) return absl::OkStatus();
  if (!it->is_object()) return TypeError("stream_options", "an object");
  return GetBool(*it, "include_usage", &r->include_usage);
}

}  // namespace

absl::StatusOr<OpenAiRequest> ParseOpenAiRequest(std::string_view body, OpenAiEndpoint endpoint,
                                                 const OpenAiParseLimits& limits) {
  if (JsonDepth(body, limits.max_json_depth) > limits.max_json_depth) {
    return absl::InvalidArgumentError(
        absl::StrCat("the body nests deeper than ", limits.max_json_depth, " levels"));
  }
  const Json j = Json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return absl::InvalidArgumentError("the body is not valid JSON");
  if (!j.is_object()) return absl::InvalidArgumentError("the body must be a JSON object");
  OpenAiRequest r;
  r.endpoint = endpoint;
  HKV_RETURN_IF_ERROR(GetString(j, "model", &r.model));
  if (endpoint == OpenAiEndpoint::kCompletions) {
    HKV_RETURN_IF_ERROR(ParsePrompt(j, limits, &r));
  } else {
    HKV_RETURN_IF_ERROR(ParseMessages(j, limits, &r));
  }
  HKV_RETURN_IF_ERROR(ParseSampling(j, &r));
  HKV_RETURN_IF_ERROR(ParseStops(j, limits, &r));
  HKV_RETURN_IF_ERROR(ParseKvPolicy(j, &r));
  HKV_RETURN_IF_ERROR(ParseStream(j, &r));
  if (auto user = j.find("user"); user != j.end() && !user->is_null() && !user->is_string()) {
    return TypeError("user", "a string");  // Otherwise ignored.
  }
  HKV_RETURN_IF_ERROR(RefuseUnservedFields(j));
  for (const PendingFeature& f : kPendingFeatures) {
    if (f.needed(r)) {
      return absl::InvalidArgumentError(
          absl::StrCat("`", f.field, "` with this value is not supported by this server yet"));
    }
  }
  return r;
}

absl::StatusOr<std::string> RenderChat(const std::vector<ChatMessage>& messages,
                                       bool add_generation_prompt, const OpenAiServing& serving) {
  if (serving.chat == nullptr || serving.tokenizer == nullptr) {
    return absl::InvalidArgumentError(
        "this model has no supported chat template: use /v1/completions instead");
  }
  if (messages.empty()) return absl::InvalidArgumentError("`messages` is empty");
  // Refused before the template copies and joins them; the rendered text is checked again.
  int64_t bytes = 0;
  for (const ChatMessage& m : messages) bytes += m.role.size() + m.content.size() + 1;
  HKV_RETURN_IF_ERROR(CheckPromptBytes(bytes, serving.prompt_limit));
  return serving.chat->Apply(messages, add_generation_prompt);
}

absl::StatusOr<std::vector<EngineRequest>> ToEngineRequests(const OpenAiRequest& request,
                                                            const OpenAiServing& serving,
                                                            const EncodeControl& control) {
  std::vector<std::vector<TokenId>> prompts;
  if (request.endpoint == OpenAiEndpoint::kChat) {
    HKV_ASSIGN_OR_RETURN(std::string text,
                         RenderChat(request.messages, request.add_generation_prompt, serving));
    HKV_ASSIGN_OR_RETURN(
        prompts.emplace_back(),
        EncodePrompt(*serving.tokenizer, text, /*add_bos=*/false, serving.prompt_limit, control));
  }
  for (const OpenAiPrompt& p : request.prompts) {
    if (p.is_ids) {
      prompts.push_back(p.ids);
      continue;
    }
    if (serving.tokenizer == nullptr) {
      return absl::InvalidArgumentError("this model is served without a tokenizer: send token ids");
    }
    if (p.text.empty()) return absl::InvalidArgumentError("`prompt` is empty");
    HKV_ASSIGN_OR_RETURN(
        prompts.emplace_back(),
        EncodePrompt(*serving.tokenizer, p.text, /*add_bos=*/true, serving.prompt_limit, control));
  }
  std::vector<EngineRequest> out;
  for (std::vector<TokenId>& ids : prompts) {
    EngineRequest r;
    const int64_t left = std::max<int64_t>(1, serving.max_model_len - int64_t(ids.size()));
    const int64_t max_tokens =
        request.max_tokens.value_or(request.endpoint == OpenAiEndpoint::kChat ? left : 16);
    r.sampling.max_tokens =
        static_cast<int32_t>(std::min<int64_t>(max_tokens, std::numeric_limits<int32_t>::max()));
    r.sampling.temperature = static_cast<float>(request.temperature.value_or(1.0));
    r.sampling.top_p = static_cast<float>(request.top_p.value_or(1.0));
    const int64_t top_k = request.top_k.value_or(0);
    if (top_k < -1 || top_k > std::numeric_limits<int32_t>::max()) {
      return absl::InvalidArgumentError("`top_k` must be -1 (no cut), 0 (no cut) or positive");
    }
    r.sampling.top_k = top_k < 0 ? 0 : static_cast<int32_t>(top_k);
    if (request.seed.has_value()) r.seed = static_cast<uint64_t>(*request.seed);
    r.sampling.ignore_eos = request.ignore_eos;
    r.sampling.stop = request.stop;
    r.sampling.stop_token_ids = request.stop_token_ids;
    // Ranges are the engine's (ValidateSamplingParams names the field), as on gRPC.
    r.sampling.presence_penalty = static_cast<float>(request.presence_penalty);
    r.sampling.frequency_penalty = static_cast<float>(request.frequency_penalty);
    r.sampling.repetition_penalty = static_cast<float>(request.repetition_penalty);
    r.sampling.min_p = static_cast<float>(request.min_p);
    r.sampling.min_tokens = static_cast<int32_t>(request.min_tokens);
    r.sampling.logprobs = request.logprobs ? static_cast<int32_t>(request.top_logprobs) : -1;
    r.sampling.n = static_cast<int32_t>(request.n);
    if (request.kv_policy.size() > 32) {
      return absl::InvalidArgumentError(
          absl::StrCat("kv_policy.name ", QuoteForError(request.kv_policy),
                       " is longer than 32 bytes (expected full, snapkv, pyramidkv, adakv or "
                       "headkv)"));
    }
    r.kv_policy = request.kv_policy;
    if (request.kv_budget < 0 || request.kv_budget > std::numeric_limits<int32_t>::max()) {
      return absl::InvalidArgumentError("kv_policy.budget must be >= 0 (0 = server default)");
    }
    r.kv_budget = static_cast<int32_t>(request.kv_budget);
    if (request.kv_beta != 0 && !(request.kv_beta > 1.0)) {
      return absl::InvalidArgumentError("kv_policy.beta must be > 1 (0 = default 1.01)");
    }
    r.kv_beta = request.kv_beta;
    r.priority = static_cast<int32_t>(request.priority);
    r.prompt = std::move(ids);
    out.push_back(std::move(r));
  }
  return out;
}

}  // namespace hkv
