#include "scheduler/scheduler.h"

#include <algorithm>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "scheduler/request_order.h"

namespace hkv {

absl::Status ValidateSchedulerOptions(const SchedulerOptions& options) {
  if (options.max_batch_tokens < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_batch_tokens must be >= 1, got ", options.max_batch_tokens));
  }
  if (options.max_seqs < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_seqs must be >= 1, got ", options.max_seqs));
  }
  if (options.max_queue < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_queue must be >= 1, got ", options.max_queue));
  }
  const PrefillPacingOptions& pacing = options.pacing;
  if (pacing.max_step < absl::ZeroDuration()) {
    return absl::InvalidArgumentError("max_step must be >= 0");
  }
  if (!(pacing.max_prefill_share >= 0.0 && pacing.max_prefill_share < 1.0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_prefill_share must be in [0, 1), got ", pacing.max_prefill_share));
  }
  if (pacing.window <= absl::ZeroDuration() || pacing.min_chunk < 1) {
    return absl::InvalidArgumentError("pacing window must be > 0 and min_chunk >= 1");
  }
  return absl::OkStatus();
}

Scheduler::Scheduler(const SchedulerOptions& options, KvCacheManager* kv)
    : options_(options), kv_(kv), pacer_(options.pacing) {
  HKV_CHECK(kv_ != nullptr) << "Scheduler needs a KvCacheManager";
  const absl::Status valid = ValidateSchedulerOptions(options);
  HKV_CHECK(valid.ok()) << valid;
}

absl::Status Scheduler::CheckRequest(const Request& r) const {
  if (r.prompt.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("request ", r.id, " has an empty prompt"));
  }
  HKV_RETURN_IF_ERROR(ValidateSamplingParams(r.sampling));
  for (int32_t i = 0; i < r.sampling.n; ++i) {
    if (requests_.contains(r.id + i)) {
      return absl::AlreadyExistsError(absl::StrCat("request ", r.id + i, " is already live"));
    }
  }
  if (r.sampling.n > options_.max_seqs) {
    return absl::InvalidArgumentError(absl::StrCat(
        "n = ", r.sampling.n, " samples cannot run together under max_seqs ", options_.max_seqs));
  }
  const HeadBudgetPlan& p = r.plan;
  if (p.policy == KvPolicyName::kFull) return absl::OkStatus();
  const KvCacheConfig& c = kv_->config();
  if (p.num_layers != c.num_layers || p.num_heads != c.num_kv_heads) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the ", std::string(PolicyNameString(p.policy)), " KV plan is for ", p.num_layers,
        " layers x ", p.num_heads, " heads but the KV cache has ", c.num_layers, " layers x ",
        c.num_kv_heads, " KV heads: plan with kv_head granularity for this model"));
  }
  const std::vector<int32_t>& caps = p.adaptive ? p.layer_budget : p.capacity;
  const size_t want = static_cast<size_t>(p.num_layers) * (p.adaptive ? 1 : p.num_heads);
  const bool negative = std::any_of(caps.begin(), caps.end(), [](int32_t c) { return c < 0; });
  if (p.window < 1 || p.budget <= p.window || caps.size() != want || negative) {
    return absl::InvalidArgumentError(
        absl::StrCat("malformed ", std::string(PolicyNameString(p.policy)), " KV plan: window ",
                     p.window, ", budget ", p.budget, ", ", caps.size(), " capacities for ", want,
                     p.adaptive ? " layers" : " heads", negative ? " (some negative)" : ""));
  }
  return absl::OkStatus();
}

absl::Status Scheduler::Add(std::unique_ptr<Request> request) {
  if (request == nullptr) return absl::InvalidArgumentError("Scheduler::Add: null request");
  HKV_RETURN_IF_ERROR(CheckRequest(*request));
  if (num_waiting() >= options_.max_queue) {
    return absl::ResourceExhaustedError(
        absl::StrCat("the waiting queue is full (", options_.max_queue, " requests): retry later"));
  }
  const int64_t peak = PeakBlocks(*request);
  if (peak > kv_->num_total_blocks()) {
    return absl::ResourceExhaustedError(
        absl::StrCat("the request needs up to ", peak, " KV head-blocks (", request->prompt.size(),
                     " prompt tokens + ", request->sampling.max_tokens, " max_tokens over ",
                     kv_->num_rows_per_seq(), " layer x KV-head rows) but the whole pool has ",
                     kv_->num_total_blocks(),
                     ": shorten the prompt, lower max_tokens, or use a compressing kv_policy"));
  }
  Request* r = request.get();
  // One lookup per generated token, however many stop ids there are; EOS wins over stop.
  r->stop_tokens.clear();
  for (TokenId id : r->sampling.stop_token_ids) r->stop_tokens[id] = FinishReason::kStop;
  if (!r->sampling.ignore_eos) {
    for (TokenId id : r->eos_ids) r->stop_tokens[id] = FinishReason::kEos;
  }
  r->status = RequestStatus::kWaiting;
  r->output.clear();
  r->num_computed_tokens = 0;
  r->arrival_order = next_arrival_order_++;
  requests_.emplace(r->id, std::move(request));
  InsertWaiting(r);
  return absl::OkStatus();
}

const Request* Scheduler::Find(RequestId id) const {
  auto it = requests_.find(id);
  return it == requests_.end() ? nullptr : it->second.get();
}

void Scheduler::InsertWaiting(Request* r) {
  waiting_.insert(std::upper_bound(waiting_.begin(), waiting_.end(), r, MoreImportant), r);
}

void Scheduler::Abort(RequestId id, FinishReason reason) {
  auto it = requests_.find(id);
  if (it == requests_.end()) return;
  aborted_.push_back(Finish(it->second.get(), reason, absl::Now()));
}

std::vector<RequestOutput> Scheduler::TakeAborted() { return std::exchange(aborted_, {}); }

void Scheduler::ExpireDeadlines(absl::Time now) {
  std::vector<Request*> expired;
  for (auto& [id, r] : requests_) {
    if (r->deadline <= now) expired.push_back(r.get());
  }
  std::sort(expired.begin(), expired.end(),
            [](const Request* a, const Request* b) { return a->arrival_order < b->arrival_order; });
  for (Request* r : expired) aborted_.push_back(Finish(r, FinishReason::kDeadline, now));
}

RequestOutput Scheduler::Finish(Request* r, FinishReason reason, absl::Time now) {
  RequestOutput out;
  out.id = r->id;
  out.finished = true;
  out.reason = reason;
  out.prompt_tokens = r->num_prompt_tokens();
  out.generated_tokens = static_cast<int32_t>(r->output.size());
  if (kv_->Contains(r->id)) {
    for (int32_t len : kv_->RowLengths(r->id)) out.kv_tokens_kept += len;
    // Not the rows' slots for steps still in flight (async: a request that EOS ends ran one step
    // too many): what the request cached, whatever ran ahead.
    if (r->in_flight_rows_plain) {
      out.kv_tokens_kept = std::max<int64_t>(
          0, out.kv_tokens_kept - int64_t{kv_->num_rows_per_seq()} * r->in_flight_tokens);
    }
    kv_->Free(r->id);
  }
  out.kv_tokens_full = int64_t{kv_->num_rows_per_seq()} * r->num_computed_tokens;
  const bool scheduled = r->first_scheduled_time != absl::InfinitePast();
  out.queue_time = (scheduled ? r->first_scheduled_time : now) - r->arrival_time;
  if (r->first_token_time != absl::InfinitePast()) {
    out.time_to_first_token = r->first_token_time - r->arrival_time;
  }
  out.num_preemptions = r->num_preemptions;
  out.sample_index = r->sample_index;
  if (r->sampling.n > 1 && !r->forked) out.unforked_samples = r->sampling.n - 1;
  if (r->first_scheduled_time != absl::InfinitePast()) released_.push_back(r->id);
  r->status = RequestStatus::kFinished;
  r->finish_reason = reason;
  std::erase(running_, r);
  std::erase(waiting_, r);
  requests_.erase(r->id);  // Destroys *r.
  return out;
}

void Scheduler::Preempt(Request* r) {
  kv_->Free(r->id);
  released_.push_back(r->id);
  r->num_computed_tokens = 0;
  r->in_flight_tokens = 0;
  r->in_flight_sample = false;
  r->in_flight_rows_plain = true;
  r->in_flight_blocks_ahead = false;
  r->status = RequestStatus::kPreempted;
  ++r->num_preemptions;
  ++num_preemptions_;
  std::erase(running_, r);
  InsertWaiting(r);
}

}  // namespace hkv
