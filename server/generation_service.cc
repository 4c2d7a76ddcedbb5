#include "server/generation_service.h"

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/logging.h"
#include "common/quote.h"
#include "common/status_macros.h"
#include "server/request_headers.h"
#include "server/request_id.h"
#include "server/stop_strings.h"

namespace hkv {
namespace {

// The proto has no deadline reason: a deadline ends the call with DEADLINE_EXCEEDED instead.
hkv::v1::FinishReason ToProto(FinishReason finish) {
  switch (finish) {
    case FinishReason::kLength:
      return hkv::v1::FINISH_REASON_LENGTH;
    case FinishReason::kStop:
      return hkv::v1::FINISH_REASON_STOP;
    case FinishReason::kEos:
      return hkv::v1::FINISH_REASON_EOS;
    case FinishReason::kAborted:
    case FinishReason::kDeadline:
      return hkv::v1::FINISH_REASON_ABORTED;
    case FinishReason::kError:
      return hkv::v1::FINISH_REASON_ERROR;
    case FinishReason::kNone:
      break;
  }
  return hkv::v1::FINISH_REASON_UNSPECIFIED;
}

void FillUsage(const StreamUsage& u, hkv::v1::Usage* out) {
  out->set_prompt_tokens(u.prompt_tokens);
  out->set_generated_tokens(u.generated_tokens);
  out->set_kv_tokens_kept(u.kv_tokens_kept);
  out->set_kv_tokens_full(u.kv_tokens_full);
  out->set_kv_bytes_kept(u.kv_bytes_kept);
  out->set_kv_bytes_full(u.kv_bytes_full);
  out->set_queue_time_ms(u.queue_time_ms);
  out->set_time_to_first_token_ms(u.time_to_first_token_ms);
  out->set_num_preemptions(u.num_preemptions);
  out->set_seed(u.seed);
}

// The longest policy name a request may carry (the known ones are at most 9 bytes).
constexpr size_t kMaxPolicyNameBytes = 32;
// A status message longer than this is cut: gRPC sends it as a header (grpc-message), and a
// header past the peer's metadata limit fails the call with RESOURCE_EXHAUSTED instead.
// Messages quote client values through QuoteForError, so this is a backstop.
constexpr size_t kMaxStatusMessageBytes = 1024;

// A deadline further out than this is treated as none (gRPC's "infinite" is year 292277026596).
constexpr absl::Duration kNoDeadline = absl::Hours(24 * 365);

// The messages' bytes, one more per message: refused past the prompt limit before the template
// renders them (the rendered text is checked again when it is tokenized).
int64_t ChatBytes(const hkv::v1::ChatMessages& chat) {
  int64_t bytes = 0;
  for (const auto& m : chat.messages()) bytes += m.role().size() + m.content().size() + 1;
  return bytes;
}

// Copies a request's sampling parameters into `r`, with the proto's defaults (max_tokens 0:
// 16; unset temperature / top_k / top_p: `defaults`, the model's); INVALID_ARGUMENT for a
// negative max_tokens or stop lists past `limits`.
absl::Status ConvertSampling(const hkv::v1::SamplingParams& s, const StopLimits& limits,
                             const SamplingDefaults& defaults, EngineRequest* r) {
  if (s.max_tokens() < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("sampling.max_tokens must be >= 0 (0 = default 16), got ", s.max_tokens()));
  }
  r->sampling.max_tokens = s.max_tokens() == 0 ? 16 : s.max_tokens();
  r->sampling.temperature = s.has_temperature() ? s.temperature() : defaults.temperature;
  r->sampling.top_k = s.has_top_k() ? s.top_k() : defaults.top_k;
  r->sampling.top_p = s.has_top_p() ? s.top_p() : defaults.top_p;
  if (s.has_seed()) r->seed = s.seed();  // Unset: the engine draws a fresh seed.
  r->sampling.ignore_eos = s.ignore_eos();
  r->sampling.presence_penalty = s.presence_penalty();
  r->sampling.frequency_penalty = s.frequency_penalty();
  r->sampling.repetition_penalty = s.repetition_penalty() == 0.0f ? 1.0f : s.repetition_penalty();
  r->sampling.min_p = s.min_p();
  r->sampling.min_tokens = s.min_tokens();
  if (s.top_logprobs() != 0 && !s.logprobs()) {
    return absl::InvalidArgumentError("sampling.top_logprobs needs sampling.logprobs set");
  }
  r->sampling.logprobs = s.logprobs() ? s.top_logprobs() : -1;
  if (s.n() < 0)
    return absl::InvalidArgumentError(absl::StrCat("sampling.n must be >= 0, got ", s.n()));
  r->sampling.n = s.n() == 0 ? 1 : s.n();
  // Checked before copying: an over-limit list is refused without a second copy of it (the
  // engine checks the same limits again on what it is given).
  HKV_RETURN_IF_ERROR(CheckStopLimits(limits, s.stop(), s.stop_token_ids_size()));
  r->sampling.stop.assign(s.stop().begin(), s.stop().end());
  r->sampling.stop_token_ids.assign(s.stop_token_ids().begin(), s.stop_token_ids().end());
  return absl::OkStatus();
}

}  // namespace

grpc::Status ToGrpcStatus(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  std::string message(status.message());
  if (message.size() > kMaxStatusMessageBytes) {
    message.resize(kMaxStatusMessageBytes);
    message += "... (cut)";
  }
  // absl::StatusCode and grpc::StatusCode share their numbering.
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()), std::move(message));
}

GenerationService::GenerationService(Engine* engine, std::shared_ptr<const Tokenizer> tokenizer,
                                     std::shared_ptr<const ChatTemplate> chat,
                                     hkv::v1::ModelInfo info, int64_t max_prompt_bytes)
    : engine_(engine),
      tokenizer_(std::move(tokenizer)),
      chat_(std::move(chat)),
      info_(std::move(info)) {
  if (tokenizer_ == nullptr) return;
  prompt_limit_ =
      MakePromptByteLimit(*tokenizer_, engine_->model_config().max_seq_len, max_prompt_bytes);
  if (prompt_limit_.max_bytes == 0) {
    HKV_LOG(WARNING) << "the tokenizer has no bound on bytes per token: text prompts are "
                        "capped only by --max-prompt-bytes, which is not set";
  }
}

absl::StatusOr<std::vector<TokenId>> GenerationService::PromptIds(
    const hkv::v1::GenerateRequest& request, const EncodeControl& control) const {
  if (tokenizer_ == nullptr && request.input_case() != hkv::v1::GenerateRequest::kPromptTokenIds) {
    return absl::InvalidArgumentError(
        "this model is served without a tokenizer: send prompt_token_ids");
  }
  switch (request.input_case()) {
    case hkv::v1::GenerateRequest::kPrompt: {
      if (request.prompt().empty()) {
        return absl::InvalidArgumentError("the prompt is empty: send text or token ids");
      }
      return EncodePrompt(*tokenizer_, request.prompt(), !request.skip_bos(), prompt_limit_,
                          control);
    }
    case hkv::v1::GenerateRequest::kPromptTokenIds:
      return std::vector<TokenId>(request.prompt_token_ids().ids().begin(),
                                  request.prompt_token_ids().ids().end());
    case hkv::v1::GenerateRequest::kChat: {
      if (chat_ == nullptr) {
        return absl::InvalidArgumentError(
            "this model has no chat template (serve it with --chat-template FILE): send a "
            "prompt or token ids instead");
      }
      if (request.chat().messages().empty()) {
        return absl::InvalidArgumentError("chat has no messages");
      }
      // Refused before the messages are copied and joined; the joined text is checked again.
      if (absl::Status s = CheckPromptBytes(ChatBytes(request.chat()), prompt_limit_); !s.ok()) {
        return s;
      }
      std::vector<ChatMessage> messages;
      for (const auto& m : request.chat().messages()) messages.push_back({m.role(), m.content()});
      auto text = chat_->Apply(messages, /*add_generation_prompt=*/true);
      if (!text.ok()) return text.status();
      return EncodePrompt(*tokenizer_, *text, /*add_bos=*/false, prompt_limit_, control);
    }
    case hkv::v1::GenerateRequest::INPUT_NOT_SET:
      break;
  }
  return absl::InvalidArgumentError("no input: set one of prompt, prompt_token_ids or chat");
}

absl::StatusOr<EngineRequest> GenerationService::ToEngineRequest(
    const hkv::v1::GenerateRequest& request, absl::Time deadline,
    const std::function<bool()>& cancelled) const {
  // Tokenizing a long text polls this (on this thread) every 64 KiB or so.
  EncodeControl control;
  control.check = [&cancelled, deadline]() -> absl::Status {
    if (cancelled && cancelled()) {
      return absl::CancelledError("the client cancelled the request while it was tokenized");
    }
    if (absl::Now() > deadline) {
      return absl::DeadlineExceededError("the request's deadline passed while it was tokenized");
    }
    return absl::OkStatus();
  };
  EngineRequest r;
  // Checked before tokenizing (the engine checks again, for its other callers).
  if (!request.request_id().empty()) {
    absl::Status id = ValidateClientRequestId(request.request_id());
    if (!id.ok()) return id;
  }
  r.request_id = request.request_id();
  HKV_ASSIGN_OR_RETURN(r.prompt, PromptIds(request, control));
  HKV_RETURN_IF_ERROR(ConvertSampling(request.sampling(), engine_->options().stop_limits,
                                      engine_->options().sampling_defaults, &r));
  if (request.kv_policy().name().size() > kMaxPolicyNameBytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "kv_policy.name ", QuoteForError(request.kv_policy().name()), " is longer than ",
        kMaxPolicyNameBytes, " bytes (expected full, snapkv, pyramidkv, adakv or headkv)"));
  }
  r.kv_policy = request.kv_policy().name();
  if (request.kv_policy().budget() < 0) {
    return absl::InvalidArgumentError("kv_policy.budget must be >= 0 (0 = server default)");
  }
  r.kv_budget = request.kv_policy().budget();
  if (request.kv_policy().beta() != 0 && !(request.kv_policy().beta() > 1.0)) {
    return absl::InvalidArgumentError("kv_policy.beta must be > 1 (0 = default 1.01)");
  }
  r.kv_beta = request.kv_policy().beta();
  r.priority = request.priority();
  r.deadline = deadline;
  return r;
}

grpc::Status GenerationService::Run(
    grpc::ServerContext* context, const hkv::v1::GenerateRequest& request, const Caller& caller,
    const std::function<bool(const hkv::v1::GenerateResponse&)>& emit, FinishedRequest* log) {
  absl::Time deadline = absl::FromChrono(context->deadline());
  if (deadline - absl::Now() > kNoDeadline) deadline = absl::InfiniteFuture();
  auto converted = ToEngineRequest(request, deadline, [context] { return context->IsCancelled(); });
  if (!converted.ok()) return ToGrpcStatus(converted.status());
  // The message's request_id wins over the x-request-id header.
  if (converted->request_id.empty()) converted->request_id = caller.header_request_id;
  converted->tenant = caller.tenant;
  auto submitted = engine_->Submit(std::move(*converted));
  if (!submitted.ok()) return ToGrpcStatus(submitted.status());
  std::shared_ptr<RequestStream> stream = *submitted;
  log->request_id = stream->request_id();
  log->prompt_tokens = static_cast<int32_t>(stream->prompt_ids().size());
  // Echoed in the initial metadata, which goes out with the first response (or the status).
  context->AddInitialMetadata(kRequestIdHeader, stream->request_id());
  bool sent_any = false;
  while (true) {
    std::optional<StreamChunk> chunk = stream->Next(absl::Milliseconds(50));
    if (!chunk.has_value()) {
      if (context->IsCancelled()) {
        engine_->Cancel(stream->id(), FinishReason::kAborted);
        log->finish_reason = "aborted";
        return grpc::Status(grpc::StatusCode::CANCELLED, "the client cancelled the request");
      }
      if (absl::Now() > deadline) {
        engine_->Cancel(stream->id(), FinishReason::kDeadline);
        log->finish_reason = "deadline";
        return grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED,
                            "the request's deadline passed before it finished");
      }
      continue;
    }
    if (chunk->finish == FinishReason::kError && !chunk->status.ok() && !sent_any) {
      return ToGrpcStatus(chunk->status);
    }
    if (chunk->finish == FinishReason::kDeadline) {
      return grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED,
                          "the request's deadline passed before it finished");
    }
    if (chunk->finished) {
      const StreamUsage& u = chunk->usage;
      log->finish_reason = std::string(FinishReasonName(chunk->finish));
      log->generated_tokens = u.generated_tokens;
      log->queue_ms = u.queue_time_ms;
      log->ttft_ms = u.time_to_first_token_ms;
      log->kv_tokens_kept = u.kv_tokens_kept;
      log->kv_tokens_full = u.kv_tokens_full;
      log->preemptions = u.num_preemptions;
    }
    hkv::v1::GenerateResponse response;
    response.set_request_id(stream->request_id());
    response.set_index(chunk->index);
    for (TokenId t : chunk->token_ids) response.add_token_ids(t);
    for (const TokenLogprobs& l : chunk->logprobs) {
      hkv::v1::TokenLogprob* p = response.add_logprobs();
      p->set_token_id(l.token);
      p->set_logprob(l.logprob);
      for (size_t k = 0; k < l.top_ids.size(); ++k) {
        hkv::v1::TopLogprob* top = p->add_top();
        top->set_token_id(l.top_ids[k]);
        top->set_logprob(l.top_logprobs[k]);
      }
    }
    response.set_text(chunk->text);
    if (chunk->finished) {
      response.set_finish_reason(ToProto(chunk->finish));
      FillUsage(chunk->usage, response.mutable_usage());
    }
    if (!emit(response)) {
      engine_->Cancel(stream->id(), FinishReason::kAborted);
      log->finish_reason = "aborted";
      return grpc::Status(grpc::StatusCode::CANCELLED, "the client went away");
    }
    sent_any = true;
    if (chunk->finished && chunk->finish == FinishReason::kError && !chunk->status.ok()) {
      return ToGrpcStatus(chunk->status);
    }
    if (chunk->last) return grpc::Status::OK;  // Every sample (n > 1) has finished.
  }
}

grpc::Status GenerationService::TooManyCalls() {
  engine_->mutable_metrics()->requests_rejected_total++;
  return grpc::Status(
      grpc::StatusCode::RESOURCE_EXHAUSTED,
      absl::StrCat("too many concurrent streams: this server runs at most ", calls_.limit(),
                   " Generate/Complete calls at once (--max-concurrent-streams); retry later or "
                   "on another replica"));
}

void GenerationService::SetApiKeys(std::shared_ptr<const ApiKeySet> keys,
                                   std::shared_ptr<TenantLimiter> limiter) {
  api_keys_ = keys != nullptr ? std::move(keys) : std::make_shared<const ApiKeySet>();
  // Without keys every call has the same (empty) tenant: no per-key cap then.
  tenant_calls_ = limiter != nullptr && api_keys_->enabled() ? std::move(limiter)
                                                             : std::make_shared<TenantLimiter>();
}

absl::StatusOr<GenerationService::Caller> GenerationService::Identify(
    grpc::ServerContext* context) {
  const HeaderLookup headers = GrpcHeaders(*context);
  Caller caller;
  if (api_keys_ != nullptr && api_keys_->enabled()) {
    absl::StatusOr<std::string> tenant =
        api_keys_->Authenticate(headers(kAuthorizationHeader).value_or(""));
    if (!tenant.ok()) {
      engine_->mutable_metrics()->requests_unauthenticated_total++;
      return tenant.status();
    }
    caller.tenant = *std::move(tenant);
  }
  HKV_ASSIGN_OR_RETURN(caller.header_request_id, RequestIdFromHeaders(headers));
  caller.traceparent = TraceparentFromHeaders(headers);
  return caller;
}

grpc::Status GenerationService::Serve(
    grpc::ServerContext* context, const hkv::v1::GenerateRequest& request,
    const std::function<bool(const hkv::v1::GenerateResponse&)>& emit) {
  const absl::Time start = absl::Now();
  // Refused before anything else: an unauthenticated call costs no slot and no engine work.
  absl::StatusOr<Caller> caller = Identify(context);
  if (!caller.ok()) return ToGrpcStatus(caller.status());
  std::optional<CallLimiter::Slot> slot = calls_.TryAcquire();
  if (!slot.has_value()) return TooManyCalls();
  FinishedRequest log;
  log.request_id = !request.request_id().empty() ? request.request_id() : caller->header_request_id;
  log.tenant = caller->tenant;
  log.traceparent = caller->traceparent;
  log.finish_reason = "refused";
  grpc::Status status;
  absl::StatusOr<TenantLimiter::Slot> tenant_slot = tenant_calls_->Acquire(caller->tenant);
  if (!tenant_slot.ok()) {
    engine_->mutable_metrics()->requests_rejected_total++;
    status = ToGrpcStatus(tenant_slot.status());
  } else {
    status = Run(context, request, *caller, emit, &log);
  }
  // absl and gRPC share the code numbers and names.
  log.status = absl::StatusCodeToString(static_cast<absl::StatusCode>(status.error_code()));
  log.e2e_ms = absl::ToDoubleMilliseconds(absl::Now() - start);
  LogFinishedRequest(log);
  return status;
}

grpc::Status GenerationService::Generate(grpc::ServerContext* context,
                                         const hkv::v1::GenerateRequest* request,
                                         grpc::ServerWriter<hkv::v1::GenerateResponse>* writer) {
  return Serve(context, *request,
               [writer](const hkv::v1::GenerateResponse& r) { return writer->Write(r); });
}

grpc::Status GenerationService::Complete(grpc::ServerContext* context,
                                         const hkv::v1::GenerateRequest* request,
                                         hkv::v1::GenerateResponse* response) {
  if (request->sampling().n() > 1) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                        "Complete returns one sample: use Generate for sampling.n > 1 (each "
                        "response says its sample in `index`)");
  }
  response->set_request_id(request->request_id());
  return Serve(context, *request, [response](const hkv::v1::GenerateResponse& r) {
    response->set_request_id(r.request_id());
    response->mutable_token_ids()->MergeFrom(r.token_ids());
    response->mutable_logprobs()->MergeFrom(r.logprobs());
    response->mutable_text()->append(r.text());
    if (r.finish_reason() != hkv::v1::FINISH_REASON_UNSPECIFIED) {
      response->set_finish_reason(r.finish_reason());
      *response->mutable_usage() = r.usage();
    }
    return true;
  });
}

grpc::Status GenerationService::Abort(grpc::ServerContext* context,
                                      const hkv::v1::AbortRequest* request,
                                      hkv::v1::AbortResponse* response) {
  absl::StatusOr<Caller> caller = Identify(context);
  if (!caller.ok()) return ToGrpcStatus(caller.status());
  // Server ids ("hkv-...") may be aborted: they are unguessable, so only their owner has one.
  absl::Status valid = ValidateRequestIdSyntax(request->request_id());
  if (!valid.ok()) return ToGrpcStatus(valid);
  // With API keys, only the caller's tenant's requests are found.
  response->set_found(engine_->Abort(request->request_id(), caller->tenant));
  return grpc::Status::OK;
}

grpc::Status GenerationService::GetModelInfo(grpc::ServerContext* context,
                                             const hkv::v1::GetModelInfoRequest*,
                                             hkv::v1::ModelInfo* response) {
  absl::StatusOr<Caller> caller = Identify(context);
  if (!caller.ok()) return ToGrpcStatus(caller.status());
  *response = info_;
  return grpc::Status::OK;
}

}  // namespace hkv
