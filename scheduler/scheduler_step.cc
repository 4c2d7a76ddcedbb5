// Scheduler::Schedule: plans one step (running requests, then waiting ones) under the token
// budget, allocating each request's KV, and builds the step's Batch.
#include <algorithm>
#include <utility>

#include "scheduler/request_order.h"
#include "scheduler/scheduler.h"

namespace hkv {

int32_t Scheduler::StepTokens(const Request& r, const StepPlan& step, bool* select) const {
  const int32_t n = r.num_prompt_tokens(), done = r.num_scheduled_tokens();
  *select = false;
  int32_t budget = std::max(step.budget, 0);
  if (step.decoding && r.num_tokens_ahead() - done > 1) {  // Prefill work beside decoding streams.
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
  return std::clamp(r.num_tokens_ahead() - done, 0, budget);
}

bool Scheduler::CanRunAhead(const Request& r) const {
  if (r.in_flight_tokens == 0) return true;  // Not in the step in flight.
  if (r.in_flight_blocks_ahead) return false;
  // Its pending token would be its last: the step in flight ends it (max_tokens).
  return !r.in_flight_sample || static_cast<int32_t>(r.output.size()) + 1 < r.sampling.max_tokens;
}

bool Scheduler::Allocate(Request& r, int32_t num_tokens, bool select, Planned* p) {
  *p = Planned{&r, num_tokens, select, {}, std::nullopt};
  const int32_t rows = kv_->num_rows_per_seq();
  if (!select || r.num_scheduled_tokens() > 0) {
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
    if (step->ahead && !CanRunAhead(*r)) continue;
    bool select = false;
    const int32_t n = StepTokens(*r, *step, &select);
    if (n == 0) continue;
    Planned p;
    bool fits = Allocate(*r, n, select, &p);
    if (!fits && step->ahead) {  // Preemption waits for Schedule(), after the step in flight.
      step->short_of_blocks = true;
      return;
    }
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
    if (n == 0 || !Allocate(*r, n, select, &p)) {  // The head waits; nobody skips it.
      step->short_of_blocks = n > 0;
      return;
    }
    waiting_.erase(waiting_.begin());
    seats += r->samples_to_draw();
    r->status = RequestStatus::kRunning;
    running_.push_back(r);
    AddToStep(std::move(p), step);
  }
}

std::optional<Batch> Scheduler::Schedule(absl::Time now) {
  // A step whose Update() never came (the worker failed) left no trace in the requests but
  // holds their new blocks: recompute those sequences. Its page-table delta may not have
  // reached the worker's tables either: start the delta stream again.
  if (!in_flight_.empty() && options_.page_table_deltas) kv_->ResetDeltaTracking();
  for (const std::vector<RequestId>& ids : std::exchange(in_flight_, {})) {
    for (RequestId id : ids) {
      auto it = requests_.find(id);
      if (it != requests_.end() && it->second->status == RequestStatus::kRunning) {
        Preempt(it->second.get());
      }
    }
  }
  ahead_short_ = false;
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
  last_work_ = step.work;
  last_schedule_time_ = now;
  step_pending_ = pacer_.enabled();
  return LaunchPlan(step, now);
}

std::optional<Batch> Scheduler::ScheduleAhead(absl::Time now) {
  if (pacer_.enabled() || in_flight_.size() != 1 || ahead_short_) return std::nullopt;
  ExpireDeadlines(now);
  StepPlan step;
  step.budget = options_.max_batch_tokens;
  step.ahead = true;
  ScheduleRunning(&step);
  if (!step.short_of_blocks) ScheduleWaiting(&step);
  ahead_short_ = step.short_of_blocks;
  if (step.planned.empty()) return std::nullopt;
  return LaunchPlan(step, now);
}

Batch Scheduler::LaunchPlan(StepPlan& step, absl::Time now) {
  std::vector<RequestId> ids;
  ids.reserve(step.planned.size());
  for (Planned& p : step.planned) {
    if (p.request->first_scheduled_time == absl::InfinitePast()) {
      p.request->first_scheduled_time = now;
    }
    ids.push_back(p.request->id);
  }
  in_flight_.push_back(std::move(ids));
  Batch b = BuildBatch(step.planned);
  for (size_t i = 0; i < step.planned.size(); ++i) {
    Request& r = *step.planned[i].request;
    const SequenceStep& s = b.seqs[i];
    r.in_flight_tokens += static_cast<int32_t>(s.tokens.size());
    r.in_flight_sample = s.sample;
    r.in_flight_blocks_ahead =
        s.select || s.num_samples > 1 || (s.sample && s.sampling.uses_history());
    r.in_flight_rows_plain = !(s.select && s.start_pos == 0);
  }
  return b;
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
  if (options_.page_table_deltas) {  // O(changed rows), not O(blocks): common/batch.h
    b.kv_delta = kv_->ExportDelta(ids);
    b.kv_len_after = kv_->ExportRowTokens(ids);
  } else {
    KvCsr csr = kv_->ExportCsr(ids);
    b.kv_indptr = std::move(csr.indptr);
    b.kv_indices = std::move(csr.indices);
    b.kv_len_after = std::move(csr.num_tokens);
  }
  b.block_copies = kv_->TakeBlockCopies();
  b.kv_len_before.reserve(b.kv_len_after.size());
  b.seqs.reserve(planned.size());
  for (const Planned& p : planned) {
    b.kv_len_before.insert(b.kv_len_before.end(), p.len_before.begin(), p.len_before.end());
    const Request& r = *p.request;
    SequenceStep s;
    s.id = r.id;
    s.start_pos = r.num_scheduled_tokens();
    s.tokens.reserve(p.num_tokens);
    for (int32_t t = 0; t < p.num_tokens; ++t) {
      const int32_t pos = s.start_pos + t;  // Past num_tokens(): the step in flight samples it.
      s.tokens.push_back(pos < r.num_tokens() ? r.token_at(pos) : kPendingToken);
    }
    s.sample = s.start_pos + p.num_tokens == r.num_tokens_ahead();
    s.sample_step = static_cast<int32_t>(r.output.size()) + (r.in_flight_sample ? 1 : 0);
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

}  // namespace hkv
