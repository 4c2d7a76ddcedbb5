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
// the one place where credentials (API keys) are to be checked.
//
// Thread-safe: Handle runs on the server's handler threads, concurrently.

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "server/engine.h"
#include "server/openai_request.h"
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

class OpenAiApi {
 public:
  // `tokenizer` and `chat` may be null (token ids only; no chat). `engine` outlives this.
  OpenAiApi(Engine* engine, std::shared_ptr<const Tokenizer> tokenizer,
            std::shared_ptr<const ChatTemplate> chat, OpenAiApiOptions options);

  // Answers one request (the StreamingHttpServer handler).
  HttpReply Handle(const HttpRequest& request, const std::function<void()>& wake) const;
  // Returns the reply that refuses `request` on its headers alone, or nullopt to serve it. Runs
  // before any other work on every request. Accepts everything for now.
  std::optional<HttpReply> CheckHeaders(const HttpRequest& request) const;

 private:
  HttpReply Generate(const HttpRequest& request, OpenAiEndpoint endpoint,
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
};

// The model ids `config` serves over HTTP: served_model_name split at commas (blanks dropped),
// else the name of the model's directory ("stories260K" for the embedded default).
std::vector<std::string> ServedModelNames(const ServerConfig& config);

// The API's options and its HTTP server's limits from `config`.
OpenAiApiOptions OpenAiApiOptionsFrom(const ServerConfig& config);
StreamingHttpLimits HttpLimitsFrom(const ServerConfig& config);

// The HTTP reply carrying an OpenAI error object for `status` (Retry-After on 429 and 503).
HttpReply OpenAiErrorReply(const absl::Status& status, bool at_submit);

}  // namespace hkv
