#pragma once
// GenerationService: the hkv.v1.Generation gRPC service. Converts proto messages to
// EngineRequests (proto types stop here) and streams the engine's output back.
//
// Thread-safe: gRPC calls the handlers from its own thread pool; each handler only submits to
// the Engine and reads its own RequestStream.

#include <functional>
#include <memory>
#include <string>

#include "grpcpp/grpcpp.h"
#include "hkv/v1/generation.grpc.pb.h"
#include "server/auth/api_keys.h"
#include "server/auth/tenant_limiter.h"
#include "server/call_limiter.h"
#include "server/engine.h"
#include "server/request_log.h"
#include "server/server_config.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/prompt_limit.h"
#include "tokenizer/tokenizer.h"

namespace hkv {

// Maps an absl::Status to the gRPC status with the same code and message.
grpc::Status ToGrpcStatus(const absl::Status& status);

class GenerationService final : public hkv::v1::Generation::Service {
 public:
  // `chat` may be null (the model has no supported chat format). Text prompts longer than
  // `max_prompt_bytes` (0: the cap derived from the engine's context, see prompt_limit.h) are
  // refused before they are tokenized.
  GenerationService(Engine* engine, std::shared_ptr<const Tokenizer> tokenizer,
                    std::shared_ptr<const ChatTemplate> chat, hkv::v1::ModelInfo info,
                    int64_t max_prompt_bytes = 0);

  grpc::Status Generate(grpc::ServerContext* context, const hkv::v1::GenerateRequest* request,
                        grpc::ServerWriter<hkv::v1::GenerateResponse>* writer) override;
  grpc::Status Complete(grpc::ServerContext* context, const hkv::v1::GenerateRequest* request,
                        hkv::v1::GenerateResponse* response) override;
  grpc::Status Abort(grpc::ServerContext* context, const hkv::v1::AbortRequest* request,
                     hkv::v1::AbortResponse* response) override;
  grpc::Status GetModelInfo(grpc::ServerContext* context,
                            const hkv::v1::GetModelInfoRequest* request,
                            hkv::v1::ModelInfo* response) override;

  // Caps the Generate and Complete calls in flight together; past it a call gets
  // RESOURCE_EXHAUSTED at once. Set before the server starts.
  void SetMaxConcurrentCalls(int limit) { calls_.set_limit(limit); }
  // Requires an API key of `keys` on Generate, Complete, Abort and GetModelInfo (when it holds
  // any) and counts each tenant's Generate/Complete calls in `limiter` (null: no cap), which
  // other front ends may share so that one per-key limit covers them all. Set before the
  // server starts.
  void SetApiKeys(std::shared_ptr<const ApiKeySet> keys, std::shared_ptr<TenantLimiter> limiter);
  int calls_in_flight() const { return calls_.in_flight(); }

  // Converts a request (tokenizing text or chat) for the engine. INVALID_ARGUMENT when bad or
  // over the prompt byte cap; tokenizing stops with CANCELLED once `cancelled` (may be empty)
  // returns true, and with DEADLINE_EXCEEDED once `deadline` passes.
  absl::StatusOr<EngineRequest> ToEngineRequest(const hkv::v1::GenerateRequest& request,
                                                absl::Time deadline,
                                                const std::function<bool()>& cancelled = {}) const;

 private:
  // Who calls and what its headers say; UNAUTHENTICATED (counted) without a valid key,
  // INVALID_ARGUMENT for a bad x-request-id.
  struct Caller {
    std::string tenant;
    std::string header_request_id;
    std::string traceparent;
  };
  // The prompt's token ids: text and chat tokenized under the byte cap (stopped by `control`),
  // token ids copied. INVALID_ARGUMENT for a missing, empty or unsupported input.
  absl::StatusOr<std::vector<TokenId>> PromptIds(const hkv::v1::GenerateRequest& request,
                                                 const EncodeControl& control) const;
  // Runs a request, calling `emit` for each chunk; returns the final status.
  // `log` gets what the request's log line says (id, usage, finish reason).
  grpc::Status Run(grpc::ServerContext* context, const hkv::v1::GenerateRequest& request,
                   const Caller& caller,
                   const std::function<bool(const hkv::v1::GenerateResponse&)>& emit,
                   FinishedRequest* log);
  // The refusal of a call past the concurrency limit.
  grpc::Status TooManyCalls();
  absl::StatusOr<Caller> Identify(grpc::ServerContext* context);
  // Generate and Complete: identifies the caller, takes its places, runs and logs the request.
  grpc::Status Serve(grpc::ServerContext* context, const hkv::v1::GenerateRequest& request,
                     const std::function<bool(const hkv::v1::GenerateResponse&)>& emit);

  Engine* engine_;
  std::shared_ptr<const Tokenizer> tokenizer_;
  std::shared_ptr<const ChatTemplate> chat_;
  const hkv::v1::ModelInfo info_;
  // Each call holds a gRPC handler thread while it runs; GrpcServer sizes the pool to match.
  CallLimiter calls_{kDefaultMaxConcurrentStreams};
  PromptByteLimit prompt_limit_;  // Unused without a tokenizer.
  std::shared_ptr<const ApiKeySet> api_keys_ = std::make_shared<ApiKeySet>();
  std::shared_ptr<TenantLimiter> tenant_calls_ = std::make_shared<TenantLimiter>();
};

}  // namespace hkv
