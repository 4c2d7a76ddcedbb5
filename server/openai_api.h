#pragma once
// OpenAiApi: the routes of the OpenAI-compatible HTTP API, served by a StreamingHttpServer over
// the same Engine as gRPC:
//
//   POST /v1/completions, POST /v1/chat/completions   (streamed as server-sent events or not)
//   GET  /v1/models
//   POST /tokenize, POST /detokenize                  (vLLM's)
//   GET  /health (200 ready, else 503), GET /metrics  (Prometheus text)
//
// Every request passes CheckHeaders first, before its body is parsed or the engine is touched:
// the one place where its headers are read. With API keys (SetApiKeys), every route but
// /health, /healthz and /metrics needs `Authorization: Bearer KEY`; a missing or wrong key is
// 401 (code "invalid_api_key") and costs no engine work. A request then belongs to the key's
// tenant, whose requests in flight --max-requests-per-key caps (429 for that key only).
// `X-Request-Id` (the rules of gRPC's x-request-id; else the server's id) names the engine
// request, is echoed as a response header and ends the response id ("cmpl-ID"); `traceparent`
// goes into the request's finished line (server/request_log.h), logged as gRPC's are.
//
// Thread-safe: Handle runs on the server's handler threads, concurrently.

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "server/auth/api_keys.h"
#include "server/auth/tenant_limiter.h"
#include "server/engine.h"
#include "server/openai_request.h"
#include "server/request_headers.h"
#include "server/server_config.h"
#include "server/streaming_http_server.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"

namespace hkv {

struct OpenAiApiOptions {
  // The model ids served (--served-model-name); the first is the one responses name when a
  // request names none. REQUIRES: not empty.
  std::vector<std::string> served_model_names;
  int64_t max_prompt_bytes = 0;  // 0: context x the tokenizer's longest token.
  OpenAiParseLimits limits;
};

// Who sends a request, from its headers (CheckHeaders).
struct HttpCaller {
  std::string tenant;      // "" without API keys.
  std::string request_id;  // X-Request-Id, "" when absent.
  std::string traceparent;
};

class OpenAiApi {
 public:
  // `tokenizer` and `chat` may be null (token ids only; no chat). `engine` outlives this.
  OpenAiApi(Engine* engine, std::shared_ptr<const Tokenizer> tokenizer,
            std::shared_ptr<const ChatTemplate> chat, OpenAiApiOptions options);

  // Answers one request (the StreamingHttpServer handler).
  HttpReply Handle(const HttpRequest& request, const std::function<void()>& wake) const;
  // Returns the reply that refuses `request` on its headers alone (401 for a missing or wrong
  // API key, 400 for a bad X-Request-Id), or nullopt to serve it as `caller`. Runs before any
  // other work on every request.
  std::optional<HttpReply> CheckHeaders(const HttpRequest& request, HttpCaller* caller) const;
  // Requires a key of `keys` (when it holds any) and counts each tenant's generate requests in
  // `limiter` (null: no cap), shared with gRPC so that one per-key limit covers both front
  // ends. Call before serving.
  void SetApiKeys(std::shared_ptr<const ApiKeySet> keys, std::shared_ptr<TenantLimiter> limiter);

 private:
  HttpReply Generate(const HttpRequest& request, const HttpCaller& caller, OpenAiEndpoint endpoint,
                     const std::function<void()>& wake) const;
  HttpReply Models() const;
  HttpReply Tokenize(const HttpRequest& request) const;
  HttpReply Detokenize(const HttpRequest& request) const;
  // NOT_FOUND (404) unless `model` is empty or one of the served names.
  absl::Status CheckModel(const std::string& model) const;

  Engine* const engine_;
  const std::shared_ptr<const Tokenizer> tokenizer_;
  const std::shared_ptr<const ChatTemplate> chat_;
  const OpenAiApiOptions options_;
  OpenAiServing serving_;
  std::shared_ptr<const ApiKeySet> api_keys_ = std::make_shared<ApiKeySet>();
  std::shared_ptr<TenantLimiter> tenant_requests_ = std::make_shared<TenantLimiter>();
};

// The model ids `config` serves over HTTP: served_model_name split at commas (blanks dropped),
// else the name of the model's directory ("stories260K" for the embedded default).
std::vector<std::string> ServedModelNames(const ServerConfig& config);

// The API's options and its HTTP server's limits from `config`.
OpenAiApiOptions OpenAiApiOptionsFrom(const ServerConfig& config);
StreamingHttpLimits HttpLimitsFrom(const ServerConfig& config);

// A lookup over an HTTP request's headers (valid while `request` is).
HeaderLookup HttpRequestHeaders(const HttpRequest& request);

// The HTTP reply carrying an OpenAI error object for `status` (Retry-After on 429 and 503).
HttpReply OpenAiErrorReply(const absl::Status& status, bool at_submit);

}  // namespace hkv
