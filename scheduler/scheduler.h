#pragma once
// Scheduler: continuous batching over the per-head KV cache, after vLLM v1's token-budget model.
// There are no prefill/decode phases: each request's num_computed_tokens catches up with its
// tokens, under `max_batch_tokens` tokens per step and `max_seqs` running sequences.
//
// One engine step:  Schedule(now) -> Batch  ->  worker Execute(batch)  ->  Update(batch, result)
//
//   Schedule:  1. end requests past their deadline;
//              2. running requests, most important first (priority desc, then oldest): a
//                 decode token, or the next prefill chunk; when one cannot grow, preempt the
//                 least important running request (lowest priority, then newest), maybe itself;
//              3. unless step 2 preempted, admit waiting requests in order (priority desc, FIFO
//                 within a priority) while their first step's blocks fit; no skipping ahead.
//
// - Full-policy prompts prefill in chunks that fit the token budget left in the step.
// - A compressed prompt (plan.compresses(n)) that fits the budget left in the step prefills in
//   ONE `select` step that keeps only the plan's tokens per (layer, KV head), so it costs the
//   plan's blocks, not the prompt's. Adaptive plans (adakv) reserve a per-layer bound, and
//   Update() commits what the worker kept.
// - A longer compressed prompt prefills in chunks like a full one: its rows hold the full K/V
//   (transient blocks, grown chunk by chunk under the same admission and preemption rules)
//   until the last chunk, which holds at least the SnapKV window and is a `select` step with
//   start_pos > 0; the worker compacts each head's kept tokens into the row's first blocks and
//   Update() shrinks the rows (KvCacheManager::Shrink), freeing the rest in the same step.
//   A prompt whose full K/V could never fit the pool (or a budget below the window) keeps the
//   one-step prefill, which may exceed max_batch_tokens as the sole multi-token step.
// - Decode appends one token to every (layer, KV head) row; nothing is evicted later.
// - Preemption is recompute: the victim's blocks are freed and it waits again at its old place
//   in the queue. Recompute is exact: a compressed prompt is compressed again from the original
//   prompt (select step, no sampling), then the generated tokens run as a plain chunk that
//   samples the next one, so greedy output does not depend on preemption or batching.
// - Abort() and deadlines free blocks at once; their outputs come from TakeAborted(). Finished
//   requests free their blocks in Update().
// - A Schedule() not followed by Update() (a failed worker step) is undone by the next
//   Schedule(): the sequences of that batch are recomputed.
// - Async scheduling: ScheduleAhead() plans step N+1 while step N (the last Schedule()'s or
//   ScheduleAhead()'s) is still running, before its Update(). A request whose step N samples
//   runs that token as kPendingToken (common/batch.h); one whose step N selects, forks, or
//   samples a token its penalties must see sits that step out, as does one that step N surely
//   finishes (max_tokens). A request step N ends (EOS, stop) ran one step too many: Update()
//   drops its result, as for an abort. ScheduleAhead never preempts: when a request does not
//   fit, the step stops there and the next step is planned by Schedule(), after Update().
//
// Not thread-safe: owned by the engine thread, like the KvCacheManager it drives.

#include <cstdint>
#include <deque>
#include <memory>
#include <optional>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/time/time.h"
#include "block_manager/kv_cache_manager.h"
#include "common/batch.h"
#include "scheduler/prefill_pacer.h"
#include "scheduler/request.h"

namespace hkv {

struct SchedulerOptions {
  int32_t max_batch_tokens = 8192;  // Tokens run per step (see the compressed-prefill rule).
  int32_t max_seqs = 256;           // Running sequences at most.
  int32_t max_queue = 1024;         // Waiting requests at most; Add() refuses more.
  // While streams decode: cut prefill chunks to a step time and cap prefill's share of the GPU
  // (scheduler/prefill_pacer.h). Off by default.
  PrefillPacingOptions pacing;
  // Steps carry page-table deltas (Batch::kv_delta) instead of the full CSR: for a worker that
  // keeps the tables (Worker::AcceptsPageTableDeltas).
  bool page_table_deltas = false;
};

// INVALID_ARGUMENT naming the field unless max_batch_tokens, max_seqs and max_queue are >= 1,
// and the pacing options are in range (max_step >= 0, max_prefill_share in [0, 1), window > 0,
// min_chunk >= 1).
absl::Status ValidateSchedulerOptions(const SchedulerOptions& options);

class Scheduler {
 public:
  // REQUIRES: ValidateSchedulerOptions(options).ok(); `kv` is not null, starts empty and
  // outlives the scheduler.
  Scheduler(const SchedulerOptions& options, KvCacheManager* kv);

  // Queues a request. INVALID_ARGUMENT for an empty prompt, bad sampling params or a plan that
  // does not match the cache's layers x KV heads; ALREADY_EXISTS for a live id;
  // RESOURCE_EXHAUSTED when the queue is full or the request's peak footprint (PeakBlocks)
  // exceeds the whole pool.
  absl::Status Add(std::unique_ptr<Request> request);
  // Ends a waiting or running request now and frees its blocks; its output is reported by
  // TakeAborted(). No-op for unknown or finished ids. Safe between Schedule() and Update():
  // the step's result for it is dropped (its freed blocks are reused from the next Schedule()).
  void Abort(RequestId id, FinishReason reason);
  // Plans the next step, or returns nullopt when nothing can run. Requests past their deadline
  // end first (reported by TakeAborted()).
  std::optional<Batch> Schedule(absl::Time now);
  // Plans the step after the one in flight (see async scheduling above), or returns nullopt:
  // nothing may run ahead, or not exactly one step is in flight, or pacing is on, or the last
  // ScheduleAhead() stopped short of blocks (until the next Schedule()).
  std::optional<Batch> ScheduleAhead(absl::Time now);
  // Applies the worker's results for `batch`, the oldest step in flight: advances each request,
  // appends sampled tokens and finishes requests on max_tokens, EOS or a stop token. A result
  // that does not match its step finishes that request with kError.
  std::vector<RequestOutput> Update(const Batch& batch, const BatchResult& result, absl::Time now);
  // Returns the outputs of requests ended by Abort() or deadlines since the last call.
  std::vector<RequestOutput> TakeAborted();

  // Returns the most head-blocks `request` can hold at once: its prompt as the plan keeps it
  // (the adaptive reservation bound for adakv) plus max_tokens in every row, or, when its
  // compressed prompt prefills in chunks, the prompt's full K/V if that is more; with n > 1,
  // plus what each other sample adds to the shared prompt (its copy of each row's partial block
  // and its own max_tokens).
  int64_t PeakBlocks(const Request& request) const;
  // Returns whether `request`'s compressed prompt may prefill in chunks: its full K/V (the
  // transient blocks) fits the whole pool.
  bool ChunksCompressedPrefill(const Request& request) const;
  // Returns the live request `id`, or null.
  const Request* Find(RequestId id) const;

  // Returns whether any request is waiting, preempted or running.
  bool HasUnfinished() const { return !requests_.empty(); }
  // Returns the requests holding KV blocks.
  int32_t num_running() const { return static_cast<int32_t>(running_.size()); }
  // Returns the queued requests, preempted ones included.
  int32_t num_waiting() const { return static_cast<int32_t>(waiting_.size()); }
  // Returns the preemptions since construction.
  int64_t num_preemptions() const { return num_preemptions_; }
  // Returns the options and the KV cache manager it schedules over.
  const SchedulerOptions& options() const { return options_; }
  const KvCacheManager& kv() const { return *kv_; }

 private:
  // One request's share of the step being planned.
  struct Planned {
    Request* request = nullptr;
    int32_t num_tokens = 0;           // Tokens run this step.
    bool select = false;              // Compressed prefill.
    std::vector<int32_t> len_before;  // Row lengths before this step's allocation.
    std::optional<KvCacheManager::LayerReservation> reservation;  // Adaptive select only.
  };
  struct StepPlan {
    int32_t budget = 0;            // Tokens left; negative after an oversized compressed prefill.
    bool has_prefill = false;      // A multi-token step is planned.
    bool preempted = false;        // Step 2 preempted someone: admit nobody this step.
    bool ahead = false;            // ScheduleAhead: no preemption, in-flight requests may sit out.
    bool short_of_blocks = false;  // ahead: a request did not fit; admit nobody.
    // Pacing: streams decode in this step, and whether it may carry prefill work.
    bool decoding = false;
    bool prefill_allowed = true;
    StepWork work;  // What is planned so far, for the pacer's cost model.
    std::vector<Planned> planned;
  };

  absl::Status CheckRequest(const Request& r) const;
  // Tokens to run for `r` in `step` (0: none fit) and whether it is its compressed prefill.
  int32_t StepTokens(const Request& r, const StepPlan& step, bool* select) const;
  // Whether `r` may run in a step planned ahead (see async scheduling above).
  bool CanRunAhead(const Request& r) const;
  // Ends planning: records the step as in flight and builds its Batch.
  Batch LaunchPlan(StepPlan& step, absl::Time now);
  // Blocks of `r`'s prompt uncompressed, over every row.
  int64_t TransientBlocks(const Request& r) const;
  // Shrinks `r`'s transient rows to the kept counts of its last chunk's result.
  absl::Status ShrinkToKept(const Request& r, const std::vector<int32_t>& kept);
  // Grows `r`'s KV for this step into `planned`; false (nothing changed) when the pool is short.
  bool Allocate(Request& r, int32_t num_tokens, bool select, Planned* planned);
  void ScheduleRunning(StepPlan* step);
  void ScheduleWaiting(StepPlan* step);
  void AddToStep(Planned planned, StepPlan* step);
  // Frees `r`'s blocks and queues it again for recompute.
  void Preempt(Request* r);
  void InsertWaiting(Request* r);
  void ExpireDeadlines(absl::Time now);
  // n > 1: after `r`'s prefill sampled all n tokens (`result`), creates samples 1..n-1 sharing
  // its blocks and appends their outputs; an error when the result lacks them.
  absl::Status ForkSamples(Request& r, const SequenceResult& result, absl::Time now,
                           std::vector<RequestOutput>* outputs);
  // Returns the most head-blocks one sample of `r` holds itself: PeakBlocks for n = 1.
  int64_t SingleSamplePeak(const Request& r) const;
  // Applies one step's result to `r`; an error when the result does not match the step.
  absl::Status ApplyStep(Request& r, const SequenceStep& step, const SequenceResult* result,
                         absl::Time now);
  // Returns the stop reason after `r` sampled its latest token (kNone: keep going).
  FinishReason StopReason(const Request& r) const;
  // Frees `r`, reports its usage, and destroys it.
  RequestOutput Finish(Request* r, FinishReason reason, absl::Time now);
  Batch BuildBatch(const std::vector<Planned>& planned);

  const SchedulerOptions options_;
  KvCacheManager* const kv_;
  absl::flat_hash_map<RequestId, std::unique_ptr<Request>> requests_;  // Live requests.
  std::vector<Request*> waiting_;  // Waiting and preempted: priority desc, then arrival order.
  std::vector<Request*> running_;
  // Sequences of each planned step not yet Update()d, oldest first (at most two: async).
  std::deque<std::vector<RequestId>> in_flight_;
  bool ahead_short_ = false;  // The last ScheduleAhead() stopped short of blocks.
  std::vector<RequestOutput> aborted_;
  // Sequences finished, aborted or preempted since the last Batch: the next one lists them in
  // Batch::released so that workers drop their per-sequence sampling state.
  std::vector<RequestId> released_;
  // Forks (parent -> sample) since the last Batch, for workers' per-sequence state.
  std::vector<std::pair<RequestId, RequestId>> forks_;
  int64_t next_arrival_order_ = 0;
  int64_t num_preemptions_ = 0;
  // Pacing: the last Schedule()'s work and time, measured when its Update() comes.
  PrefillPacer pacer_;
  StepWork last_work_;
  absl::Time last_schedule_time_ = absl::InfinitePast();
  bool step_pending_ = false;
};

}  // namespace hkv
