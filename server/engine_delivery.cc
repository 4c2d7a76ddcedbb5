// Engine's delivery of scheduler outputs on the engine thread: new tokens through each
// request's OutputProcessor into its RequestStream (queued on the StreamPusher), the final chunk's
// usage and metrics, and forgetting a request once its last sample ends.
#include <string>
#include <utility>

#include "server/engine.h"
#include "server/engine_request_state.h"

namespace hkv {
void Engine::ObserveToken(Active& a, absl::Time now) {
  if (a.generated == 0) {
    metrics_.time_to_first_token_s.Observe(absl::ToDoubleSeconds(now - a.arrival));
  } else {
    metrics_.inter_token_latency_s.Observe(absl::ToDoubleSeconds(now - a.last_token));
  }
  a.last_token = now;
  ++a.generated;
  metrics_.generation_tokens_total++;
}

void Engine::FinishChunk(Active& a, const RequestOutput& out, bool stop_hit, absl::Time now,
                         StreamChunk* chunk) {
  const int64_t bytes_per_token = options_.kv_bytes_per_token_row > 0
                                      ? options_.kv_bytes_per_token_row
                                      : 2LL * worker_->config().head_dim * 4;
  a.finished = true;
  chunk->finished = true;
  chunk->finish = stop_hit ? FinishReason::kStop : out.reason;
  if (chunk->finish == FinishReason::kError) {
    chunk->status = absl::InternalError("the request failed in the worker");
  }
  StreamUsage& u = chunk->usage;
  u.prompt_tokens = a.index == 0 ? a.prompt_tokens : 0;  // n > 1: counted once, in sample 0's
  u.generated_tokens = a.generated;
  u.kv_tokens_kept = out.kv_tokens_kept;
  u.kv_tokens_full = out.kv_tokens_full;
  u.kv_bytes_kept = out.kv_tokens_kept * bytes_per_token;
  u.kv_bytes_full = out.kv_tokens_full * bytes_per_token;
  u.queue_time_ms = absl::ToDoubleMilliseconds(out.queue_time);
  u.time_to_first_token_ms = absl::ToDoubleMilliseconds(out.time_to_first_token);
  u.num_preemptions = out.num_preemptions;
  u.seed = a.seed;
  metrics_.requests_finished_total++;
  metrics_.CountFinish(chunk->finish);
  if (chunk->finish == FinishReason::kError) metrics_.requests_failed_total++;
  metrics_.kv_bytes_kept_total += u.kv_bytes_kept;
  metrics_.kv_bytes_full_total += u.kv_bytes_full;
  metrics_.e2e_latency_s.Observe(absl::ToDoubleSeconds(now - a.arrival));
  metrics_.queue_time_s.Observe(absl::ToDoubleSeconds(out.queue_time));
}

void Engine::Deliver(const std::vector<RequestOutput>& outputs) {
  const absl::Time now = absl::Now();
  for (const RequestOutput& out : outputs) {
    auto it = active_.find(out.id);
    if (it == active_.end()) continue;
    Active& a = *it->second;
    StreamChunk chunk;
    chunk.index = a.index;
    bool stop_hit = false;
    for (size_t i = 0; i < out.new_tokens.size() && !a.finished && !stop_hit; ++i) {
      const TokenId t = out.new_tokens[i];
      ObserveToken(a, now);
      chunk.token_ids.push_back(t);
      if (i < out.logprobs.size()) chunk.logprobs.push_back(out.logprobs[i]);
      OutputProcessor::Delta delta =
          a.output->Push(t, /*last=*/out.finished && i + 1 == out.new_tokens.size());
      chunk.text += delta.text;
      stop_hit = delta.stop_hit;
    }
    if (stop_hit && !out.finished) {
      // The stream closes with the abort's output, which TakeAborted() hands over at the top of
      // the next loop iteration: only that output knows the KV usage before the blocks go.
      scheduler_->Abort(out.id, FinishReason::kStop);
    }
    if (out.finished && !a.finished) FinishChunk(a, out, stop_hit, now, &chunk);
    if (!chunk.token_ids.empty() || chunk.finished) pusher_.Add(a.stream, std::move(chunk));
    if (out.unforked_samples > 0) EndUnforked(out, now);
    if (out.finished) Erase(out.id);
  }
}

void Engine::EndUnforked(const RequestOutput& out, absl::Time now) {
  for (int32_t k = 1; k <= out.unforked_samples; ++k) {
    auto it = active_.find(out.id + k);
    if (it == active_.end()) continue;
    StreamChunk chunk;
    chunk.index = it->second->index;
    RequestOutput none = out;
    none.kv_tokens_kept = none.kv_tokens_full = 0;
    if (!it->second->finished) FinishChunk(*it->second, none, false, now, &chunk);
    pusher_.Add(it->second->stream, std::move(chunk));
    Erase(out.id + k);
  }
}

void Engine::Erase(RequestId id) {
  auto it = active_.find(id);
  if (it == active_.end()) return;
  const RequestId request = id - it->second->index;
  const std::string client_key =
      ClientKey(it->second->stream->tenant(), it->second->stream->request_id());
  active_.erase(it);
  if (--samples_[request].left > 0) return;
  samples_.erase(request);
  absl::MutexLock lock(&mu_);
  by_client_id_.erase(client_key);
  --live_requests_;
}

}  // namespace hkv
