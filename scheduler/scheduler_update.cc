// Scheduler::Update: applies a worker step's results to its requests (advance, sample, shrink
// or commit compressed rows, fork n > 1 samples) and finishes those that stop.
#include <algorithm>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "scheduler/scheduler.h"

namespace hkv {

absl::Status Scheduler::ApplyStep(Request& r, const SequenceStep& s, const SequenceResult* res,
                                  absl::Time now) {
  if (res == nullptr || res->id != s.id) {
    return absl::InternalError(absl::StrCat("the worker returned no result for request ", s.id));
  }
  if (s.start_pos != r.num_computed_tokens) {
    return absl::InternalError(absl::StrCat("request ", r.id, ": a step at position ", s.start_pos,
                                            " came back but ", r.num_computed_tokens,
                                            " tokens are computed"));
  }
  if (s.select && s.start_pos > 0) {
    HKV_RETURN_IF_ERROR(ShrinkToKept(r, res->kept_per_head));
  } else if (s.select && r.plan.adaptive) {
    HKV_RETURN_IF_ERROR(kv_->CommitAdaptive(r.id, res->kept_per_head));
  }
  if (s.sample && res->token < 0) {
    return absl::InternalError(absl::StrCat("the worker sampled no token for request ", r.id));
  }
  if (s.sample && static_cast<int32_t>(res->extra_tokens.size()) != s.num_samples - 1) {
    return absl::InternalError(absl::StrCat("the worker drew ", res->extra_tokens.size() + 1,
                                            " samples for request ", r.id, ", not ",
                                            s.num_samples));
  }
  r.num_computed_tokens += static_cast<int32_t>(s.tokens.size());
  r.in_flight_tokens -= static_cast<int32_t>(s.tokens.size());
  if (r.in_flight_tokens <= 0) {  // No later step of it in flight.
    r.in_flight_tokens = 0;
    r.in_flight_sample = false;
    r.in_flight_rows_plain = true;
    r.in_flight_blocks_ahead = false;
  }
  if (s.sample && r.sampling.logprobs >= 0 && res->logprobs.empty()) {
    return absl::InternalError(absl::StrCat("the worker returned no logprobs for request ", r.id));
  }
  if (s.sample) {
    r.output.push_back(res->token);
    if (r.first_token_time == absl::InfinitePast()) r.first_token_time = now;
  }
  return absl::OkStatus();
}

absl::Status Scheduler::ShrinkToKept(const Request& r, const std::vector<int32_t>& kept) {
  const int32_t n = r.num_prompt_tokens();
  if (!r.plan.adaptive && kept != r.plan.KeptTokens(n)) {
    return absl::InternalError(absl::StrCat("request ", r.id, ": the worker's kept counts (",
                                            kept.size(), " rows) differ from the plan's"));
  }
  for (int32_t k : kept) {
    if (k < std::min(r.plan.window, n) || k > n) {
      return absl::InternalError(
          absl::StrCat("request ", r.id, ": a head kept ", k, " of ", n, " prompt tokens"));
    }
  }
  return kv_->Shrink(r.id, kept);
}

absl::Status Scheduler::ForkSamples(Request& r, const SequenceResult& res, absl::Time now,
                                    std::vector<RequestOutput>* outputs) {
  r.forked = true;
  for (int32_t i = 1; i < r.sampling.n; ++i) {
    auto c = std::make_unique<Request>();
    c->id = r.id + i;
    c->request_id = r.request_id;
    c->prompt = r.prompt;
    c->sampling = r.sampling;
    c->sampling.seed = SampleSeed(r.sampling.seed, i);
    c->eos_ids = r.eos_ids;
    c->priority = r.priority;
    c->plan = r.plan;
    c->arrival_time = r.arrival_time;
    c->deadline = r.deadline;
    c->sample_index = i;
    c->stop_tokens = r.stop_tokens;
    c->status = RequestStatus::kRunning;
    c->output = {res.extra_tokens[i - 1]};
    c->num_computed_tokens = r.num_computed_tokens;
    c->arrival_order = r.arrival_order;
    c->forked = true;
    c->first_scheduled_time = r.first_scheduled_time;
    c->first_token_time = now;
    HKV_RETURN_IF_ERROR(kv_->Fork(r.id, c->id));
    forks_.emplace_back(r.id, c->id);
    Request* child = c.get();
    requests_.emplace(child->id, std::move(c));
    running_.push_back(child);
    const FinishReason reason = StopReason(*child);
    RequestOutput out;
    if (reason != FinishReason::kNone) {
      out = Finish(child, reason, now);
    } else {
      out.id = child->id;
      out.sample_index = i;
    }
    out.new_tokens = {res.extra_tokens[i - 1]};
    if (static_cast<size_t>(i) < res.logprobs.size()) out.logprobs = {res.logprobs[i]};
    outputs->push_back(std::move(out));
  }
  return absl::OkStatus();
}

FinishReason Scheduler::StopReason(const Request& r) const {
  // Before min_tokens the worker cannot sample a stop token (it may only when every token is
  // one); either way it does not end the request.
  const bool may_stop = static_cast<int32_t>(r.output.size()) > r.sampling.min_tokens;
  if (auto it = r.stop_tokens.find(r.output.back()); may_stop && it != r.stop_tokens.end()) {
    return it->second;
  }
  if (static_cast<int32_t>(r.output.size()) >= r.sampling.max_tokens) return FinishReason::kLength;
  return FinishReason::kNone;
}

std::vector<RequestOutput> Scheduler::Update(const Batch& batch, const BatchResult& result,
                                             absl::Time now) {
  if (!in_flight_.empty()) in_flight_.pop_front();
  if (std::exchange(step_pending_, false)) pacer_.Observe(last_work_, now - last_schedule_time_);
  std::vector<RequestOutput> outputs;
  for (size_t i = 0; i < batch.seqs.size(); ++i) {
    const SequenceStep& s = batch.seqs[i];
    auto it = requests_.find(s.id);
    // Aborted (or expired) while the step ran: already reported by TakeAborted().
    if (it == requests_.end() || it->second->status != RequestStatus::kRunning) continue;
    Request* r = it->second.get();
    const absl::Status applied =
        ApplyStep(*r, s, i < result.seqs.size() ? &result.seqs[i] : nullptr, now);
    if (!applied.ok()) {
      HKV_LOG(ERROR) << "request " << r->id << " failed: " << applied;
      RequestOutput out = Finish(r, FinishReason::kError, now);
      out.error = std::string(applied.message());
      outputs.push_back(std::move(out));
      continue;
    }
    if (!s.sample) continue;
    if (s.num_samples > 1) {
      if (const absl::Status forked = ForkSamples(*r, result.seqs[i], now, &outputs);
          !forked.ok()) {
        HKV_LOG(ERROR) << "request " << r->id << " failed: " << forked;
        RequestOutput out = Finish(r, FinishReason::kError, now);
        out.error = std::string(forked.message());
        outputs.push_back(std::move(out));
        continue;
      }
    }
    const TokenId token = r->output.back();
    const FinishReason reason = StopReason(*r);
    RequestOutput out;
    if (reason != FinishReason::kNone) {
      out = Finish(r, reason, now);
    } else {
      out.id = r->id;
    }
    out.new_tokens = {token};
    if (i < result.seqs.size() && !result.seqs[i].logprobs.empty()) {
      out.logprobs = {result.seqs[i].logprobs[0]};
    }
    outputs.push_back(std::move(out));
  }
  return outputs;
}

}  // namespace hkv
