#include "scheduler/scheduler.h"

#include <algorithm>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "common/status_macros.h"

namespace hkv {
namespace {

// Scheduling order: higher priority first, then older (earlier Add) first.
bool MoreImportant(const Request* a, const Request* b) {
  return a->priority != b->priority ? a->priority > b->priority
                                    : a->arrival_order < b->arrival_order;
}

int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace

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

bool Scheduler::ChunksCompressedPrefill(const Request& r) const {
  return r.compresses() && TransientBlocks(r) <= kv_->num_total_blocks();
}

int64_t Scheduler::TransientBlocks(const Request& r) const {
  return int64_t{kv_->num_rows_per_seq()} *
         CeilDiv(r.num_prompt_tokens(), kv_->config().block_size);
}

int64_t Scheduler::PeakBlocks(const Request& r) const {
  const int64_t one = SingleSamplePeak(r);
  if (r.sampling.n <= 1) return one;
  // Each other sample shares the prompt's full blocks and adds, per row, its copy of the
  // partial last block and its own max_tokens: at most its single peak less the full blocks.
  const int32_t bs = kv_->config().block_size;
  const int64_t m = std::max(r.sampling.max_tokens, 0);
  int64_t child = 0;
  if (!r.compresses()) {
    child = kv_->num_rows_per_seq() *
            (CeilDiv(r.num_prompt_tokens() + m, bs) - r.num_prompt_tokens() / bs);
  } else if (!r.plan.adaptive) {
    for (int32_t kept : r.plan.KeptTokens(r.num_prompt_tokens())) {
      child += CeilDiv(kept + m, bs) - kept / bs;
    }
  } else {
    child = one;  // Adaptive rows are known only after the prefill: bound by a whole sample.
  }
  return one + (r.sampling.n - 1) * child;
}

int64_t Scheduler::SingleSamplePeak(const Request& r) const {
  const int64_t n = r.num_prompt_tokens();
  const int64_t m = std::max(r.sampling.max_tokens, 0);
  const int32_t bs = kv_->config().block_size;
  const int64_t heads = kv_->config().num_kv_heads;
  if (!r.compresses()) return kv_->num_rows_per_seq() * CeilDiv(n + m, bs);
  // A chunked compressed prefill holds the prompt's full K/V until its last chunk.
  const int64_t transient = ChunksCompressedPrefill(r) ? TransientBlocks(r) : 0;
  int64_t peak = 0;
  if (!r.plan.adaptive) {
    for (int32_t kept : r.plan.KeptTokens(r.num_prompt_tokens())) peak += CeilDiv(kept + m, bs);
    return std::max(peak, transient);
  }
  // Adaptive: the prefill reserves a bound per layer; once committed, every row grows by m.
  // A layer keeping K tokens over H heads then holds at most (K + H * (m + bs - 1)) / bs blocks.
  int64_t reserved = 0;
  for (int32_t l = 0; l < r.plan.num_layers; ++l) {
    reserved += r.plan.MaxBlocksPerLayer(l, r.num_prompt_tokens(), bs);
    const int64_t kept = r.plan.LayerKeptBound(l, r.num_prompt_tokens());
    peak += std::min(heads * CeilDiv(n + m, bs), (kept + heads * (m + bs - 1)) / bs);
  }
  return std::max({reserved, peak, transient});
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
  r->status = RequestStatus::kPreempted;
  ++r->num_preemptions;
  ++num_preemptions_;
  std::erase(running_, r);
  InsertWaiting(r);
}

int32_t Scheduler::StepTokens(const Request& r, const StepPlan& step, bool* select) const {
  const int32_t n = r.num_prompt_tokens(), done = r.num_computed_tokens;
  *select = false;
  int32_t budget = std::max(step.budget, 0);
  if (step.decoding && r.num_tokens() - done > 1) {  // Prefill work beside decoding streams.
    if (!step.prefill_allowed) return 0;
    budget = pacer_.ChunkLimit(done, step.work, budget);
  }
  if (r.compresses() && done < n) {
    const int32_t left = n - done;
    // The prompt's rest fits: it selects this step (from scratch when it is the whole prompt,
    // else from the transient rows holding the earlier chunks).
    *select = left <= budget;
    if (*select) return left;
    // A chunk that leaves the SnapKV window (and at least one token) to the last chunk.
    const int32_t chunk = std::min(budget, left - r.plan.window);
    if (chunk > 0 && ChunksCompressedPrefill(r)) return chunk;
    // The rest in one step past the budget, as the step's sole multi-token sequence: a prompt
    // whose full K/V could never fit the pool, or a budget smaller than the window.
    *select = true;
    return step.has_prefill ? 0 : left;
  }
  return std::clamp(r.num_tokens() - done, 0, budget);
}

bool Scheduler::Allocate(Request& r, int32_t num_tokens, bool select, Planned* p) {
  *p = Planned{&r, num_tokens, select, {}, std::nullopt};
  const int32_t rows = kv_->num_rows_per_seq();
  if (!select || r.num_computed_tokens > 0) {
    // Plain rows: decode, a prefill chunk, or the transient rows of a chunked compressed
    // prefill (its last chunk too; Update() shrinks them to the kept tokens).
    p->len_before = kv_->Contains(r.id) ? kv_->RowLengths(r.id) : std::vector<int32_t>(rows, 0);
    return kv_->AppendUniform(r.id, num_tokens);
  }
  const int32_t n = r.num_prompt_tokens();
  p->len_before.assign(rows, 0);
  if (!r.plan.adaptive) return kv_->Append(r.id, r.plan.KeptTokens(n));
  std::vector<int32_t> blocks(r.plan.num_layers);
  for (int32_t l = 0; l < r.plan.num_layers; ++l) {
    // Fits: Add() refused requests whose peak passes the pool's (int32) block count.
    blocks[l] = static_cast<int32_t>(r.plan.MaxBlocksPerLayer(l, n, kv_->config().block_size));
  }
  p->reservation = kv_->ReserveLayers(r.id, blocks);
  return p->reservation.has_value();
}

void Scheduler::AddToStep(Planned planned, StepPlan* step) {
  const int64_t n = planned.num_tokens;
  if (n == 1) {
    ++step->work.decodes;
  } else {
    step->work.prefill_tokens += n;
    step->work.pairs +=
        static_cast<double>(n) *
        (static_cast<double>(planned.request->num_computed_tokens) + static_cast<double>(n) / 2.0);
  }
  step->budget -= planned.num_tokens;
  step->has_prefill |= planned.num_tokens > 1;
  step->planned.push_back(std::move(planned));
}

void Scheduler::ScheduleRunning(StepPlan* step) {
  std::sort(running_.begin(), running_.end(), MoreImportant);
  for (size_t i = 0; i < running_.size() && step->budget > 0; ++i) {
    Request* r = running_[i];
    bool select = false;
    const int32_t n = StepTokens(*r, *step, &select);
    if (n == 0) continue;
    Planned p;
    bool fits = Allocate(*r, n, select, &p);
    // The tail (lowest priority, newest) is never one planned already: those precede r.
    while (!fits && running_.back() != r) {
      Preempt(running_.back());
      step->preempted = true;
      fits = Allocate(*r, n, select, &p);
    }
    if (!fits) {  // r is the least important left; everyone after it is gone too.
      Preempt(r);
      step->preempted = true;
      return;
    }
    AddToStep(std::move(p), step);
  }
}

void Scheduler::ScheduleWaiting(StepPlan* step) {
  // Seats: running sequences, and the samples an unforked n > 1 request adds after its prefill.
  int32_t seats = 0;
  for (const Request* r : running_) seats += r->samples_to_draw();
  while (!waiting_.empty() && step->budget > 0 && seats < options_.max_seqs) {
    Request* r = waiting_.front();
    if (seats + r->samples_to_draw() > options_.max_seqs) return;
    bool select = false;
    const int32_t n = StepTokens(*r, *step, &select);
    Planned p;
    if (n == 0 || !Allocate(*r, n, select, &p)) return;  // The head waits; nobody skips it.
    waiting_.erase(waiting_.begin());
    seats += r->samples_to_draw();
    r->status = RequestStatus::kRunning;
    running_.push_back(r);
    AddToStep(std::move(p), step);
  }
}

std::optional<Batch> Scheduler::Schedule(absl::Time now) {
  // A step whose Update() never came (the worker failed) left no trace in the requests but
  // holds their new blocks: recompute those sequences.
  for (RequestId id : std::exchange(in_flight_, {})) {
    auto it = requests_.find(id);
    if (it != requests_.end() && it->second->status == RequestStatus::kRunning) {
      Preempt(it->second.get());
    }
  }
  ExpireDeadlines(now);
  StepPlan step;
  step.budget = options_.max_batch_tokens;
  if (pacer_.enabled()) {
    for (const Request* r : running_) {
      step.decoding |= r->num_computed_tokens > 0 && r->num_tokens() - r->num_computed_tokens == 1;
    }
    step.prefill_allowed = pacer_.PrefillAllowed();
  }
  step_pending_ = false;  // A step without Update() is not measured.
  ScheduleRunning(&step);
  // Admitting now would take the blocks just freed for the running ones (vLLM v1 does the same).
  if (!step.preempted) ScheduleWaiting(&step);
  if (step.planned.empty()) return std::nullopt;
  for (Planned& p : step.planned) {
    if (p.request->first_scheduled_time == absl::InfinitePast()) {
      p.request->first_scheduled_time = now;
    }
    in_flight_.push_back(p.request->id);
  }
  last_work_ = step.work;
  last_schedule_time_ = now;
  step_pending_ = pacer_.enabled();
  return BuildBatch(step.planned);
}

Batch Scheduler::BuildBatch(const std::vector<Planned>& planned) {
  const KvCacheConfig& config = kv_->config();
  Batch b;
  b.num_layers = config.num_layers;
  b.num_kv_heads = config.num_kv_heads;
  b.block_size = config.block_size;
  b.released = std::exchange(released_, {});
  b.forks = std::exchange(forks_, {});
  std::vector<RequestId> ids;
  ids.reserve(planned.size());
  for (const Planned& p : planned) ids.push_back(p.request->id);
  KvCsr csr = kv_->ExportCsr(ids);
  b.kv_indptr = std::move(csr.indptr);
  b.kv_indices = std::move(csr.indices);
  b.kv_len_after = std::move(csr.num_tokens);
  b.block_copies = kv_->TakeBlockCopies();
  b.kv_len_before.reserve(b.kv_len_after.size());
  b.seqs.reserve(planned.size());
  for (const Planned& p : planned) {
    b.kv_len_before.insert(b.kv_len_before.end(), p.len_before.begin(), p.len_before.end());
    const Request& r = *p.request;
    SequenceStep s;
    s.id = r.id;
    s.start_pos = r.num_computed_tokens;
    s.tokens.reserve(p.num_tokens);
    for (int32_t t = 0; t < p.num_tokens; ++t) s.tokens.push_back(r.token_at(s.start_pos + t));
    s.sample = s.start_pos + p.num_tokens == r.num_tokens();
    s.sample_step = static_cast<int32_t>(r.output.size());
    s.sampling = ToStepSampling(r.sampling);
    s.num_prompt_tokens = r.num_prompt_tokens();
    if (s.sample) s.num_samples = r.samples_to_draw();
    if (s.start_pos == 0 && r.sampling.min_tokens > 0) {
      for (const auto& [id, reason] : r.stop_tokens) s.min_tokens_banned.push_back(id);
      std::sort(s.min_tokens_banned.begin(), s.min_tokens_banned.end());
    }
    s.select = p.select;
    if (p.select) {
      s.selection.window = r.plan.window;
      if (r.plan.adaptive) {
        s.selection.layer_budget = r.plan.layer_budget;
        if (p.reservation.has_value()) {  // One-step prefill; a chunked one shrinks its rows.
          s.layer_block_indptr = p.reservation->indptr;
          s.layer_blocks = p.reservation->blocks;
        }
      } else {
        s.selection.capacity = r.plan.capacity;
      }
    }
    b.seqs.push_back(std::move(s));
  }
  return b;
}

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
  in_flight_.clear();
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
