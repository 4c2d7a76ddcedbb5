// Engine's loop on the engine thread: take submitted requests and controls from the inbox, run
// one scheduler step on the worker, deliver its outputs, publish gauges; and how it fails
// everything when the worker does or when it stops.
#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "server/engine.h"
#include "server/engine_request_state.h"

namespace hkv {
void Engine::DrainInbox() {
  std::deque<Submitted> inbox;
  std::vector<Control> controls;
  {
    absl::MutexLock lock(&mu_);
    inbox.swap(inbox_);
    controls.swap(controls_);
  }
  for (Submitted& submitted : inbox) Admit(std::move(submitted));
  for (const Control& c : controls) {
    // Every sample of the request, even once sample 0 has ended (aborting one not started or
    // already ended is a no-op).
    auto it = samples_.find(c.id);
    if (it == samples_.end()) continue;
    for (int32_t i = 0; i < it->second.n; ++i) scheduler_->Abort(c.id + i, c.reason);
  }
}

void Engine::Admit(Submitted submitted) {
  std::unique_ptr<Request> request = std::move(submitted.request);
  const std::shared_ptr<RequestStream>& stream = submitted.stream;
  auto active = std::make_unique<Active>();
  active->stream = stream;
  active->output = std::move(submitted.output);
  active->prompt_tokens = static_cast<int32_t>(request->prompt.size());
  active->seed = request->sampling.seed;
  active->arrival = request->arrival_time;
  active->num_samples = request->sampling.n;
  const RequestId id = request->id;
  const uint64_t seed = request->sampling.seed;
  absl::Status status = scheduler_->Add(std::move(request));
  if (!status.ok()) {
    metrics_.requests_rejected_total++;
    StreamChunk chunk;
    chunk.finished = true;
    chunk.finish = FinishReason::kError;
    chunk.status = status;
    pusher_.Add(stream, std::move(chunk));
    absl::MutexLock lock(&mu_);
    by_client_id_.erase(ClientKey(stream->tenant(), stream->request_id()));
    --live_requests_;
    return;
  }
  samples_[id] = {active->num_samples, active->num_samples};
  for (int32_t i = 1; i < active->num_samples; ++i) {
    auto sample = std::make_unique<Active>();
    sample->stream = active->stream;
    sample->prompt_tokens = active->prompt_tokens;
    sample->arrival = active->arrival;
    sample->num_samples = active->num_samples;
    sample->index = i;
    sample->seed = SampleSeed(seed, i);
    sample->prefilled = sample->prompt_tokens;  // The prompt is prefilled (and counted) once.
    sample->output = std::move(submitted.sample_outputs[i - 1]);
    active_.emplace(id + i, std::move(sample));
  }
  active_.emplace(id, std::move(active));
}

void Engine::FailAll(const absl::Status& status) {
  for (auto& [id, a] : active_) {
    scheduler_->Abort(id, FinishReason::kError);
    if (a->finished) continue;
    a->finished = true;
    StreamChunk chunk;
    chunk.finished = true;
    chunk.finish = FinishReason::kError;
    chunk.status = status;
    pusher_.Add(a->stream, std::move(chunk));
  }
}

void Engine::PublishGauges() {
  metrics_.requests_running = scheduler_->num_running();
  metrics_.requests_waiting = scheduler_->num_waiting();
  metrics_.kv_blocks_used = kv_->num_total_blocks() - kv_->num_free_blocks();
  metrics_.kv_blocks_used_peak =
      std::max(metrics_.kv_blocks_used.load(), metrics_.kv_blocks_used_peak.load());
  metrics_.preemptions_total = scheduler_->num_preemptions();
  // Per-layer usage walks every table: refresh it every 32 steps, not every step.
  if (steps_++ % 32 == 0) metrics_.SetBlocksPerLayer(kv_->BlocksPerLayer());
  absl::MutexLock lock(&mu_);
  waiting_requests_ = scheduler_->num_waiting();
}

void Engine::OnWorkerFailure(const absl::Status& status) {
  HKV_LOG(ERROR) << "worker failed: " << status;
  // The device (or a peer node) is gone or in an unknown state: every request fails UNAVAILABLE
  // (a client may retry on another replica) and readiness turns NOT_SERVING.
  FailAll(absl::UnavailableError(absl::StrCat("the worker failed: ", status.message())));
  worker_failed_ = true;
  loop_alive_ = false;
  metrics_.ready = 0;
}

void Engine::Loop() {
  // While idle, the worker's liveness is polled this often (a cheap, non-blocking check).
  constexpr absl::Duration kLivenessCheckInterval = absl::Seconds(1);
  absl::Time last_liveness_check = absl::Now();
  bool fault_stall_pending = options_.fault_loop_stall > absl::ZeroDuration();
  // The watchdog times every iteration, all of it: draining the inbox, scheduling, the step,
  // delivering outputs. Only the idle wait for input is not timed.
  iteration_started_ns_ = absl::GetCurrentTimeNanos();
  while (true) {
    bool stopping;
    {
      absl::MutexLock lock(&mu_);
      stopping = stopping_;
      if (!stopping && inbox_.empty() && controls_.empty() && !scheduler_->HasUnfinished() &&
          launched_.empty()) {
        auto has_input = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
          return stopping_ || !inbox_.empty() || !controls_.empty();
        };
        iteration_started_ns_ = 0;
        mu_.AwaitWithTimeout(absl::Condition(&has_input), absl::Milliseconds(100));
        iteration_started_ns_ = absl::GetCurrentTimeNanos();
        stopping = stopping_;
      }
    }
    if (stopping) {
      for (auto& [id, a] : active_) scheduler_->Abort(id, FinishReason::kAborted);
    }
    DrainInbox();
    std::vector<RequestOutput> outputs = scheduler_->TakeAborted();
    const absl::Time now = absl::Now();
    const int64_t steps_before = metrics_.engine_steps_total.load();
    if (async_ && loop_alive_.load()) {
      RunAsyncSteps(now, &outputs);
    } else {
      std::optional<Batch> batch = scheduler_->Schedule(now);
      if (batch.has_value()) {
        metrics_.engine_schedule_ns_total += absl::ToInt64Nanoseconds(absl::Now() - now);
      }
      std::vector<RequestOutput> more = scheduler_->TakeAborted();
      outputs.insert(outputs.end(), more.begin(), more.end());
      if (batch.has_value()) RunStep(*batch, &outputs);
    }
    const bool stepped = metrics_.engine_steps_total.load() != steps_before;
    if (!stepped && loop_alive_.load() &&
        absl::Now() - last_liveness_check >= kLivenessCheckInterval) {
      last_liveness_check = absl::Now();
      if (absl::Status live = worker_->Liveness(); !live.ok()) OnWorkerFailure(live);
    }
    // Streamed tokens and finished requests to their clients: the chunks are made here and
    // pushed by the pusher's thread.
    const absl::Time deliver_start = absl::Now();
    Deliver(outputs);
    pusher_.Flush();
    if (stepped) {
      metrics_.engine_deliver_ns_total += absl::ToInt64Nanoseconds(absl::Now() - deliver_start);
    }
    PublishGauges();
    if (fault_stall_pending && metrics_.engine_steps_total.load() > 0) {
      fault_stall_pending = false;
      HKV_LOG(WARNING) << "fault injection: the engine loop stalls for "
                       << options_.fault_loop_stall;
      absl::SleepFor(options_.fault_loop_stall);
    }
    if (stopping && !scheduler_->HasUnfinished() && launched_.empty()) break;
    if (!loop_alive_.load()) {
      // A device failure: keep answering submitted requests with errors, but run nothing.
      absl::MutexLock lock(&mu_);
      stopping_ = true;
    }
    iteration_started_ns_ = absl::GetCurrentTimeNanos();  // The next iteration starts here.
  }
  iteration_started_ns_ = 0;
  FailRemaining();
  pusher_.Flush();
}

void Engine::RunStep(const Batch& batch, std::vector<RequestOutput>* outputs) {
  const absl::Time start = absl::Now();
  ApplyResult(batch, worker_->Execute(batch), start, outputs);
}

void Engine::ApplyResult(const Batch& batch, const absl::StatusOr<BatchResult>& result,
                         absl::Time waited_from, std::vector<RequestOutput>* outputs) {
  const absl::Time executed = absl::Now();
  metrics_.engine_execute_ns_total += absl::ToInt64Nanoseconds(executed - waited_from);
  CountStep(batch, result.ok());
  if (!result.ok()) {
    launched_.clear();  // Async: the worker abandons the later steps too.
    OnWorkerFailure(result.status());
    outputs->clear();
    return;
  }
  std::vector<RequestOutput> stepped = scheduler_->Update(batch, *result, absl::Now());
  outputs->insert(outputs->end(), stepped.begin(), stepped.end());
  metrics_.engine_update_ns_total += absl::ToInt64Nanoseconds(absl::Now() - executed);
}

void Engine::RunAsyncSteps(absl::Time now, std::vector<RequestOutput>* outputs) {
  auto take_aborted = [&] {
    std::vector<RequestOutput> more = scheduler_->TakeAborted();
    outputs->insert(outputs->end(), more.begin(), more.end());
  };
  if (launched_.empty()) {
    std::optional<Batch> batch = scheduler_->Schedule(now);
    take_aborted();
    if (!batch.has_value()) return;
    metrics_.engine_schedule_ns_total += absl::ToInt64Nanoseconds(absl::Now() - now);
    if (!LaunchStep(*std::move(batch))) {
      outputs->clear();
      return;
    }
  }
  // The next step, planned and queued while the device runs the one in flight.
  const absl::Time ahead_start = absl::Now();
  std::optional<Batch> ahead = scheduler_->ScheduleAhead(ahead_start);
  take_aborted();
  if (ahead.has_value()) {
    metrics_.engine_schedule_ns_total += absl::ToInt64Nanoseconds(absl::Now() - ahead_start);
    metrics_.engine_ahead_steps_total++;
    if (!LaunchStep(*std::move(ahead))) {
      outputs->clear();
      return;
    }
  }
  CompleteStep(outputs);
}

bool Engine::LaunchStep(Batch batch) {
  const absl::Time start = absl::Now();
  launched_.push_back(std::move(batch));
  const absl::Status launched = worker_->Launch(launched_.back());
  metrics_.engine_execute_ns_total += absl::ToInt64Nanoseconds(absl::Now() - start);
  if (launched.ok()) return true;
  CountStep(launched_.back(), false);
  launched_.clear();  // The worker abandons what it had launched.
  OnWorkerFailure(launched);
  return false;
}

void Engine::CompleteStep(std::vector<RequestOutput>* outputs) {
  const absl::Time start = absl::Now();
  absl::StatusOr<BatchResult> result = worker_->Await();
  const Batch batch = std::move(launched_.front());
  launched_.pop_front();
  ApplyResult(batch, result, start, outputs);
}

void Engine::CountStep(const Batch& batch, bool ok) {
  metrics_.engine_steps_total++;
  int64_t tokens = 0;
  bool prefill = false;
  for (const SequenceStep& s : batch.seqs) {
    tokens += static_cast<int64_t>(s.tokens.size());
    prefill = prefill || s.start_pos < s.num_prompt_tokens;
  }
  metrics_.engine_step_tokens_total += tokens;
  if (prefill) metrics_.engine_prefill_steps_total++;
  if (!ok) return;
  // Prompt tokens prefilled for the first time (recomputes after preemption excluded).
  for (const SequenceStep& s : batch.seqs) {
    auto it = active_.find(s.id);
    if (it == active_.end()) continue;
    Active& a = *it->second;
    const int32_t done = std::min<int32_t>(s.start_pos + s.tokens.size(), a.prompt_tokens);
    if (done > a.prefilled) {
      metrics_.prompt_tokens_total += done - a.prefilled;
      a.prefilled = done;
    }
  }
}

void Engine::FailRemaining() {
  FailAll(absl::UnavailableError("the engine stopped"));
  absl::MutexLock lock(&mu_);
  for (Submitted& submitted : inbox_) {
    StreamChunk chunk;
    chunk.finished = true;
    chunk.finish = FinishReason::kError;
    chunk.status = absl::UnavailableError("the engine stopped");
    pusher_.Add(submitted.stream, std::move(chunk));
  }
  inbox_.clear();
  live_requests_ = 0;
  by_client_id_.clear();
  loop_alive_ = false;
}

}  // namespace hkv
