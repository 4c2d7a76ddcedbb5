#include "server/openai_stream.h"

#include <algorithm>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/logging.h"
#include "tokenizer/utf8.h"

namespace hkv {

OpenAiReply::OpenAiReply(Engine* engine, OpenAiReplyInfo info, bool stream, bool include_usage,
                         std::vector<std::shared_ptr<RequestStream>> streams,
                         std::shared_ptr<const Tokenizer> tokenizer)
    : engine_(engine),
      tokenizer_(std::move(tokenizer)),
      info_(std::move(info)),
      stream_(stream),
      include_usage_(include_usage) {
  HKV_CHECK(!streams.empty());
  streams_ = std::move(streams);
  n_ = std::max(1, streams_[0]->num_samples());
  for (size_t s = 0; s < streams_.size(); ++s) {
    const std::vector<TokenId>& prompt = streams_[s]->prompt_ids();
    for (int k = 0; k < n_; ++k) {
      Choice& c = choices_.emplace_back();
      c.stream = static_cast<int>(s);
      c.prev = prompt.empty() ? -1 : prompt.back();
    }
  }
}

OpenAiReply::~OpenAiReply() { Log(); }

void OpenAiReply::Attach(HttpHeaders headers, FinishedRequest log, absl::Time start,
                         std::optional<TenantLimiter::Slot> tenant_slot) {
  headers_ = std::move(headers);
  log_ = std::move(log);
  start_ = start;
  if (tenant_slot.has_value()) tenant_slot_.emplace(*std::move(tenant_slot));
}

void OpenAiReply::Log() {
  if (!log_.has_value()) return;
  FinishedRequest& log = *log_;
  const StreamUsage& first = choices_[0].usage;
  log.queue_ms = first.queue_time_ms;
  log.ttft_ms = first.time_to_first_token_ms;
  for (const auto& s : streams_) log.prompt_tokens += static_cast<int32_t>(s->prompt_ids().size());
  for (const Choice& c : choices_) {
    log.generated_tokens += c.usage.generated_tokens;
    log.kv_tokens_kept += c.usage.kv_tokens_kept;
    log.kv_tokens_full += c.usage.kv_tokens_full;
    log.preemptions += c.usage.num_preemptions;
  }
  absl::StatusCode code = error_.code();
  if (!ended_ && error_.ok()) code = absl::StatusCode::kCancelled;  // The client left.
  const FinishReason finish = ended_ || !error_.ok() ? choices_[0].finish : FinishReason::kAborted;
  log.finish_reason = std::string(FinishReasonName(finish));
  log.status = absl::StatusCodeToString(code);
  log.e2e_ms = absl::ToDoubleMilliseconds(absl::Now() - start_);
  LogFinishedRequest(log);
  log_.reset();
}

void OpenAiReply::Poll(HttpReplyWriter* writer) {
  std::string events;  // Of this poll; the stream's head waits for its first event.
  bool all_done = true;
  for (size_t s = 0; s < streams_.size() && error_.ok(); ++s) {
    Drain(static_cast<int>(s), &events);
    all_done = all_done && StreamDone(static_cast<int>(s));
  }
  if (!stream_) {
    if (!error_.ok()) return Fail(writer);
    if (all_done) Complete(writer);
    return;
  }
  // A request that fails before any output is answered with its status, not an event.
  if (!error_.ok() && !started_ && events.empty()) return Fail(writer);
  if (!events.empty() || all_done || !error_.ok()) StartStream(writer);
  writer->Write(events);
  if (!error_.ok()) return Fail(writer);
  if (all_done) Complete(writer);
}

void OpenAiReply::StartStream(HttpReplyWriter* writer) {
  if (started_) return;
  started_ = true;
  writer->Start(200, "text/event-stream", headers_);
  if (info_.endpoint != OpenAiEndpoint::kChat) return;
  for (size_t i = 0; i < choices_.size(); ++i) {
    writer->Write(SseEvent(RenderChunk(info_, static_cast<int>(i), "", FinishReason::kNone,
                                       /*role=*/true, include_usage_)));
  }
}

bool OpenAiReply::StreamDone(int s) const {
  for (int k = 0; k < n_; ++k) {
    if (!choices_[s * n_ + k].done) return false;
  }
  return true;
}

void OpenAiReply::Drain(int s, std::string* events) {
  while (!StreamDone(s)) {
    std::optional<StreamChunk> chunk = streams_[s]->Next(absl::ZeroDuration());
    if (!chunk.has_value()) return;
    if (chunk->index < 0 || chunk->index >= n_) {
      error_ = absl::InternalError("a stream chunk names a sample out of range");
      return;
    }
    const int index = s * n_ + chunk->index;
    Choice& c = choices_[index];
    if (c.done) continue;  // A sample's chunks after its end (none are expected).
    if (chunk->finished) {
      c.done = true;
      c.finish = chunk->finish;
      c.usage = chunk->usage;
      if (chunk->finish == FinishReason::kError) {
        error_ = chunk->status.ok() ? absl::InternalError("the request failed") : chunk->status;
        return;
      }
    }
    std::vector<OpenAiLogprob> logprobs;
    if (info_.logprobs) logprobs = ChunkLogprobs(*chunk, c);
    if (!stream_) {
      c.text += chunk->text;
      for (OpenAiLogprob& l : logprobs) c.logprobs.push_back(std::move(l));
    } else if (!chunk->text.empty() || chunk->finished || !logprobs.empty()) {
      *events += SseEvent(RenderChunk(info_, index, chunk->text, c.finish, /*role=*/false,
                                      include_usage_, &logprobs));
    }
  }
}

std::string OpenAiReply::TokenBytes(TokenId prev, TokenId id) const {
  if (tokenizer_ == nullptr || id < 0 || id >= tokenizer_->vocab_size()) {
    return absl::StrCat("token_id:", id);
  }
  return tokenizer_->TokenBytes(prev, id);
}

std::vector<OpenAiLogprob> OpenAiReply::ChunkLogprobs(const StreamChunk& chunk, Choice& c) const {
  std::vector<OpenAiLogprob> out;
  // One TokenLogprobs per token id (the engine's contract); stop-string trimming shortens only
  // the text, so the logprobs of a stop string's tokens are kept.
  const size_t n = std::min(chunk.token_ids.size(), chunk.logprobs.size());
  for (size_t i = 0; i < n; ++i) {
    const TokenLogprobs& l = chunk.logprobs[i];
    OpenAiLogprob o;
    o.bytes = TokenBytes(c.prev, l.token);
    o.logprob = l.logprob;
    o.text_offset = c.text_offset;
    for (size_t k = 0; k < l.top_ids.size() && k < l.top_logprobs.size(); ++k) {
      o.top.push_back({TokenBytes(c.prev, l.top_ids[k]), l.top_logprobs[k]});
    }
    c.text_offset += static_cast<int64_t>(SanitizeUtf8(o.bytes).size());
    c.prev = l.token;
    out.push_back(std::move(o));
  }
  return out;
}

void OpenAiReply::CancelRunning() {
  for (size_t s = 0; s < streams_.size(); ++s) {
    if (StreamDone(static_cast<int>(s))) continue;
    engine_->Cancel(streams_[s]->id(), FinishReason::kAborted);
    for (int k = 0; k < n_; ++k) choices_[s * n_ + k].done = true;
  }
}

void OpenAiReply::Fail(HttpReplyWriter* writer) {
  CancelRunning();
  const int status = HttpStatusOf(error_, /*at_submit=*/false);
  const std::string message(error_.message());
  if (started_) {
    writer->Write(SseEvent(RenderError(status, message)));
    writer->Write(kSseDone);
    writer->Finish();
    ended_ = true;
    return;
  }
  HttpHeaders headers = headers_;
  if (status == 503) headers.emplace_back("Retry-After", "1");
  writer->Respond(status, "application/json", std::move(headers), RenderError(status, message));
  ended_ = true;
}

void OpenAiReply::Complete(HttpReplyWriter* writer) {
  OpenAiUsage usage;
  for (const Choice& c : choices_) {
    // n > 1: only sample 0's usage counts the prompt, so it is counted once per prompt.
    usage.prompt_tokens += c.usage.prompt_tokens;
    usage.completion_tokens += c.usage.generated_tokens;
  }
  if (stream_) {
    if (include_usage_) writer->Write(SseEvent(RenderUsageChunk(info_, usage)));
    writer->Write(kSseDone);
    writer->Finish();
    ended_ = true;
    return;
  }
  std::vector<OpenAiChoice> choices;
  for (size_t i = 0; i < choices_.size(); ++i) {
    choices.push_back({static_cast<int>(i), std::move(choices_[i].text), choices_[i].finish,
                       std::move(choices_[i].logprobs)});
  }
  writer->Respond(200, "application/json", headers_, RenderResponse(info_, choices, usage));
  ended_ = true;
}

void OpenAiReply::Abandon() { CancelRunning(); }

}  // namespace hkv
