#include "server/openai_api.h"

#include <filesystem>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "common/paths.h"
#include "common/quote.h"
#include "nlohmann/json.hpp"
#include "server/openai_render.h"
#include "server/openai_stream.h"

namespace hkv {
namespace {

using Json = nlohmann::json;

HttpReply JsonReply(const Json& j) {
  HttpReply reply;
  reply.body = j.dump(-1, ' ', false, Json::error_handler_t::replace);
  return reply;
}

HttpReply StatusReply(int status, const std::string& message) {
  HttpReply reply;
  reply.status = status;
  reply.body = RenderError(status, message);
  return reply;
}

int64_t UnixNow() { return absl::ToUnixSeconds(absl::Now()); }

}  // namespace

std::vector<std::string> ServedModelNames(const ServerConfig& config) {
  std::vector<std::string> names;
  for (absl::string_view name : absl::StrSplit(config.served_model_name, ',')) {
    name = absl::StripAsciiWhitespace(name);
    if (!name.empty()) names.emplace_back(name);
  }
  if (!names.empty()) return names;
  std::filesystem::path path(config.model.empty() ? DefaultModelPath() : config.model);
  if (!std::filesystem::is_directory(path)) path = path.parent_path();
  path = path.lexically_normal();
  if (path.filename().empty()) path = path.parent_path();
  names.push_back(path.filename().empty() ? std::string("hkv") : path.filename().string());
  return names;
}

OpenAiApiOptions OpenAiApiOptionsFrom(const ServerConfig& config) {
  OpenAiApiOptions options;
  options.served_model_names = ServedModelNames(config);
  options.max_prompt_bytes = config.max_prompt_bytes;
  options.limits.stop_limits = {config.max_stop_strings, config.max_stop_bytes,
                                config.max_stop_token_ids};
  return options;
}

StreamingHttpLimits HttpLimitsFrom(const ServerConfig& config) {
  StreamingHttpLimits limits;
  limits.max_body_bytes = static_cast<size_t>(config.http_max_body_bytes);
  limits.max_connections = config.http_max_connections;
  return limits;
}

HttpReply OpenAiErrorReply(const absl::Status& status, bool at_submit) {
  const int code = HttpStatusOf(status, at_submit);
  HttpReply reply = StatusReply(code, std::string(status.message()));
  if (code == 429 || code == 503) reply.headers.emplace_back("Retry-After", "1");
  return reply;
}

OpenAiApi::OpenAiApi(Engine* engine, std::shared_ptr<const Tokenizer> tokenizer,
                     std::shared_ptr<const ChatTemplate> chat, OpenAiApiOptions options)
    : engine_(engine),
      tokenizer_(std::move(tokenizer)),
      chat_(std::move(chat)),
      options_(std::move(options)) {
  serving_.tokenizer = tokenizer_.get();
  serving_.chat = chat_.get();
  serving_.max_model_len = engine_->model_config().max_seq_len;
  if (tokenizer_ != nullptr) {
    serving_.prompt_limit =
        MakePromptByteLimit(*tokenizer_, serving_.max_model_len, options_.max_prompt_bytes);
  }
}

HeaderLookup HttpRequestHeaders(const HttpRequest& request) {
  return [&request](std::string_view name) -> std::optional<std::string_view> {
    for (const auto& [n, v] : request.headers) {
      if (n == name) return std::string_view(v);
    }
    return std::nullopt;
  };
}

void OpenAiApi::SetApiKeys(std::shared_ptr<const ApiKeySet> keys,
                           std::shared_ptr<TenantLimiter> limiter) {
  api_keys_ = keys != nullptr ? std::move(keys) : std::make_shared<const ApiKeySet>();
  // Without keys every request has the same (empty) tenant: no per-key cap then.
  tenant_requests_ = limiter != nullptr && api_keys_->enabled() ? std::move(limiter)
                                                                : std::make_shared<TenantLimiter>();
}

std::optional<HttpReply> OpenAiApi::CheckHeaders(const HttpRequest& request,
                                                 HttpCaller* caller) const {
  const HeaderLookup headers = HttpRequestHeaders(request);
  // Probes and scrapers carry no key, as on gRPC's side (its health service and the metrics
  // port need none).
  const bool open =
      request.path == "/health" || request.path == "/healthz" || request.path == "/metrics";
  if (api_keys_->enabled() && !open) {
    absl::StatusOr<std::string> tenant =
        api_keys_->Authenticate(headers(kAuthorizationHeader).value_or(""));
    if (!tenant.ok()) {
      engine_->mutable_metrics()->requests_unauthenticated_total++;
      HttpReply reply;
      reply.status = 401;
      reply.headers.emplace_back("WWW-Authenticate", "Bearer");
      reply.body = RenderError(401,
                               "Incorrect or missing API key: send `Authorization: Bearer KEY` "
                               "with a key this server accepts (--api-key, --api-key-file)",
                               "invalid_api_key");
      return reply;
    }
    caller->tenant = *std::move(tenant);
  }
  absl::StatusOr<std::string> id = RequestIdFromHeaders(headers);
  if (!id.ok()) return OpenAiErrorReply(id.status(), /*at_submit=*/false);
  caller->request_id = *std::move(id);
  caller->traceparent = TraceparentFromHeaders(headers);
  return std::nullopt;
}

HttpReply OpenAiApi::Handle(const HttpRequest& request, const std::function<void()>& wake) const {
  HttpCaller caller;
  if (std::optional<HttpReply> refused = CheckHeaders(request, &caller)) {
    return std::move(*refused);
  }
  const std::string& path = request.path;
  const std::string& method = request.method;
  const bool get = method == "GET" || method == "HEAD";
  if (path == "/v1/completions" && method == "POST") {
    return Generate(request, caller, OpenAiEndpoint::kCompletions, wake);
  }
  if (path == "/v1/chat/completions" && method == "POST") {
    return Generate(request, caller, OpenAiEndpoint::kChat, wake);
  }
  if (path == "/v1/models" && get) return Models();
  if (path == "/tokenize" && method == "POST") return Tokenize(request);
  if (path == "/detokenize" && method == "POST") return Detokenize(request);
  if ((path == "/health" || path == "/healthz") && get) {
    HttpReply reply;
    const bool ready = engine_->metrics().ready.load() != 0 && engine_->Healthy();
    reply.status = ready ? 200 : 503;
    reply.content_type = "text/plain";
    reply.body = ready ? "" : "not ready\n";
    return reply;
  }
  if (path == "/metrics" && get) {
    HttpReply reply;
    reply.content_type = "text/plain; version=0.0.4";
    reply.body = engine_->metrics().Render();
    return reply;
  }
  for (const char* known : {"/v1/completions", "/v1/chat/completions", "/v1/models", "/tokenize",
                            "/detokenize", "/health", "/healthz", "/metrics"}) {
    if (path == known) {
      return StatusReply(
          405, absl::StrCat("method ", QuoteForError(method), " is not allowed on ", path));
    }
  }
  return StatusReply(404, absl::StrCat("no route ", QuoteForError(path)));
}

absl::Status OpenAiApi::CheckModel(const std::string& model) const {
  if (model.empty()) return absl::OkStatus();
  for (const std::string& name : options_.served_model_names) {
    if (name == model) return absl::OkStatus();
  }
  return absl::NotFoundError(absl::StrCat("The model ", QuoteForError(model),
                                          " does not exist: this server serves ",
                                          QuoteForError(options_.served_model_names[0])));
}

HttpReply OpenAiApi::Generate(const HttpRequest& http, const HttpCaller& caller,
                              OpenAiEndpoint endpoint, const std::function<void()>& wake) const {
  const absl::Time start = absl::Now();
  FinishedRequest log;
  log.request_id = caller.request_id;
  log.tenant = caller.tenant;
  log.traceparent = caller.traceparent;
  // A request refused before it runs still gets its line (as gRPC's do).
  auto refuse = [&log, &start, &caller](const absl::Status& status, bool at_submit) {
    log.finish_reason = "refused";
    log.status = absl::StatusCodeToString(status.code());
    log.e2e_ms = absl::ToDoubleMilliseconds(absl::Now() - start);
    LogFinishedRequest(log);
    HttpReply reply = OpenAiErrorReply(status, at_submit);
    if (!caller.request_id.empty()) reply.headers.emplace_back("X-Request-Id", caller.request_id);
    return reply;
  };
  absl::StatusOr<TenantLimiter::Slot> tenant_slot = tenant_requests_->Acquire(caller.tenant);
  if (!tenant_slot.ok()) {
    engine_->mutable_metrics()->requests_rejected_total++;
    return refuse(tenant_slot.status(), /*at_submit=*/true);
  }
  absl::StatusOr<OpenAiRequest> request = ParseOpenAiRequest(http.body, endpoint, options_.limits);
  if (!request.ok()) return refuse(request.status(), false);
  if (absl::Status s = CheckModel(request->model); !s.ok()) return refuse(s, false);
  absl::StatusOr<std::vector<EngineRequest>> converted =
      ToEngineRequests(*request, serving_, EncodeControl{});
  if (!converted.ok()) return refuse(converted.status(), false);
  for (size_t i = 0; i < converted->size(); ++i) {
    EngineRequest& r = (*converted)[i];
    r.tenant = caller.tenant;
    // One id per prompt of a batch: the client's for the first, then "ID-1", "ID-2", ...
    if (!caller.request_id.empty()) {
      r.request_id = i == 0 ? caller.request_id : absl::StrCat(caller.request_id, "-", i);
    }
  }
  std::vector<std::shared_ptr<RequestStream>> streams;
  for (EngineRequest& r : *converted) {
    absl::StatusOr<std::shared_ptr<RequestStream>> stream = engine_->Submit(std::move(r));
    if (!stream.ok()) {
      for (auto& s : streams) engine_->Cancel(s->id(), FinishReason::kAborted);
      return refuse(stream.status(), /*at_submit=*/true);
    }
    streams.push_back(std::move(*stream));
  }
  log.request_id = streams[0]->request_id();
  OpenAiReplyInfo info;
  info.endpoint = endpoint;
  info.id = absl::StrCat(endpoint == OpenAiEndpoint::kChat ? "chatcmpl-" : "cmpl-",
                         streams[0]->request_id());
  info.created = UnixNow();
  info.model = request->model.empty() ? options_.served_model_names[0] : request->model;
  info.logprobs = request->logprobs;
  for (auto& s : streams) s->SetNotify(wake);
  auto source =
      std::make_unique<OpenAiReply>(engine_, std::move(info), request->stream,
                                    request->include_usage, std::move(streams), tokenizer_);
  HttpHeaders headers = {{"X-Request-Id", log.request_id}};
  source->Attach(std::move(headers), std::move(log), start, *std::move(tenant_slot));
  HttpReply reply;
  reply.source = std::move(source);
  return reply;
}

HttpReply OpenAiApi::Models() const {
  Json data = Json::array();
  for (const std::string& name : options_.served_model_names) {
    data.push_back({{"id", name},
                    {"object", "model"},
                    {"created", UnixNow()},
                    {"owned_by", "hkv"},
                    {"root", options_.served_model_names[0]},
                    {"parent", nullptr},
                    {"max_model_len", serving_.max_model_len}});
  }
  return JsonReply({{"object", "list"}, {"data", std::move(data)}});
}

HttpReply OpenAiApi::Tokenize(const HttpRequest& http) const {
  const Json j = Json::parse(http.body, nullptr, /*allow_exceptions=*/false);
  const bool chat = j.is_object() && j.contains("messages");
  absl::StatusOr<OpenAiRequest> request = ParseOpenAiRequest(
      http.body, chat ? OpenAiEndpoint::kChat : OpenAiEndpoint::kCompletions, options_.limits);
  if (!request.ok()) return OpenAiErrorReply(request.status(), false);
  if (absl::Status s = CheckModel(request->model); !s.ok()) return OpenAiErrorReply(s, false);
  if (tokenizer_ == nullptr) {
    return StatusReply(400, "this model is served without a tokenizer");
  }
  Json out = {{"max_model_len", serving_.max_model_len}, {"token_strs", nullptr}};
  std::string text;
  bool add_bos = !chat;
  if (auto it = j.find("add_special_tokens"); it != j.end() && it->is_boolean()) {
    add_bos = it->get<bool>();
  } else if (it != j.end() && !it->is_null()) {
    return StatusReply(400, "`add_special_tokens` must be true or false");
  }
  if (chat) {
    absl::StatusOr<std::string> rendered =
        RenderChat(request->messages, request->add_generation_prompt, serving_);
    if (!rendered.ok()) return OpenAiErrorReply(rendered.status(), false);
    text = std::move(*rendered);
    out["prompt"] = text;
  } else {
    if (request->prompts.size() != 1 || request->prompts[0].is_ids) {
      return StatusReply(400, "`prompt` must be one string");
    }
    text = request->prompts[0].text;
  }
  absl::StatusOr<std::vector<TokenId>> ids =
      EncodePrompt(*tokenizer_, text, add_bos, serving_.prompt_limit, EncodeControl{});
  if (!ids.ok()) return OpenAiErrorReply(ids.status(), false);
  out["count"] = ids->size();
  out["tokens"] = *ids;
  return JsonReply(out);
}

HttpReply OpenAiApi::Detokenize(const HttpRequest& http) const {
  const Json j = Json::parse(http.body, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    return StatusReply(400, "the body must be a JSON object");
  }
  if (auto model = j.find("model"); model != j.end() && !model->is_null()) {
    if (!model->is_string()) return StatusReply(400, "`model` must be a string");
    if (absl::Status s = CheckModel(model->get<std::string>()); !s.ok()) {
      return OpenAiErrorReply(s, false);
    }
  }
  if (tokenizer_ == nullptr) return StatusReply(400, "this model is served without a tokenizer");
  auto tokens = j.find("tokens");
  if (tokens == j.end() || !tokens->is_array()) {
    return StatusReply(400, "`tokens` must be a list of token ids");
  }
  std::vector<TokenId> ids;
  for (const Json& t : *tokens) {
    if (!t.is_number_integer() || t.get<int64_t>() < 0 ||
        t.get<int64_t>() >= tokenizer_->vocab_size()) {
      return StatusReply(
          400, absl::StrCat("`tokens` must be token ids in [0, ", tokenizer_->vocab_size(), ")"));
    }
    ids.push_back(static_cast<TokenId>(t.get<int64_t>()));
  }
  return JsonReply({{"prompt", DecodeText(*tokenizer_, ids)}});
}

}  // namespace hkv
