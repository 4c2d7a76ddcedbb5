#pragma once
// Scheduler: continuous batching over the per-head KV cache, after vLLM v1's token-budget
// model. There are no prefill/decode phases: each request's `num_computed` catches up with its
// tokens, under `max_batch_tokens` per step and `max_seqs` running sequences.
//
// One step: Schedule() -> Batch (see common/batch.h), the worker runs it, Update() appends the
// sampled tokens and finishes requests. Running requests go first (priority, then age); then
// waiting ones, priority first and FIFO within a priority.
//
// - Full-policy prompts prefill in chunks that fit the remaining token budget.
// - A compressed prompt (plan.compresses(n)) prefills in ONE `select` step that keeps only the
//   plan's tokens per head; it may exceed the token budget when it is the only prefill in the
//   batch. Its footprint is what the plan keeps, not the prompt length.
// - Decode appends one token to every (layer, KV head) row; nothing is evicted.
// - When a running sequence cannot grow, the least important running one (lowest priority,
//   then newest) is preempted: its blocks are freed and it is recomputed later, exactly: a
//   compressed prompt is compressed again from the original prompt, then the generated tokens
//   are re-run as a plain chunk, so greedy output does not change.
//
// Not thread-safe: owned by the engine thread, like the KvCacheManager it drives.

#include <memory>
#include <optional>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/time/time.h"
#include "block_manager/kv_cache_manager.h"
#include "common/batch.h"
#include "scheduler/request.h"

namespace hkv {

struct SchedulerOptions {
  int32_t max_batch_tokens = 8192;
  int32_t max_seqs = 256;
  int32_t max_queue = 1024;  // Waiting requests at most; Add() refuses more.
};

class Scheduler {
 public:
  // `kv` must outlive the scheduler.
  Scheduler(const SchedulerOptions& options, KvCacheManager* kv);

  // Queues a request. RESOURCE_EXHAUSTED when the queue is full or the request's peak
  // footprint (prompt kept per head + max_tokens) exceeds the whole pool.
  absl::Status Add(std::unique_ptr<Request> request);
  // Ends a waiting or running request now (its blocks are freed); its output is reported by
  // TakeAborted(). No-op for unknown or finished ids.
  void Abort(RequestId id, FinishReason reason);
  // Plans the next step, or nullopt when nothing can run. Requests past their deadline end
  // first (reported by TakeAborted()).
  std::optional<Batch> Schedule(absl::Time now);
  // Applies the worker's results for `batch` (from the last Schedule()).
  std::vector<RequestOutput> Update(const Batch& batch, const BatchResult& result,
                                    absl::Time now);
  // Outputs of requests ended by Abort() or deadlines since the last call.
  std::vector<RequestOutput> TakeAborted();

  bool HasUnfinished() const { return !requests_.empty(); }
  int32_t num_running() const { return static_cast<int32_t>(running_.size()); }
  int32_t num_waiting() const { return static_cast<int32_t>(waiting_.size()); }
  int64_t num_preemptions() const { return num_preemptions_; }
  const KvCacheManager& kv() const { return *kv_; }

 private:
  struct Planned {
    Request* request;
    int32_t num_tokens;  // Tokens run this step.
    bool select;
    std::vector<int32_t> len_before;  // Row lengths before this step's allocation.
    std::optional<KvCacheManager::LayerReservation> reservation;
  };

  // Peak blocks a request needs (compressed prompt + all its output in every row).
  int64_t PeakBlocks(const Request& r) const;
  // Tokens to run for `r` this step (0: none) and whether it is its compressed prefill.
  int32_t StepTokens(const Request& r, int32_t budget, bool batch_has_prefill, bool* select) const;
  // Grows `r`'s KV for this step; false (nothing changed) when the pool is short.
  bool Allocate(Request& r, int32_t num_tokens, bool select, Planned* planned);
  void ScheduleRunning(int32_t* budget, std::vector<Planned>* planned);
  void ScheduleWaiting(int32_t* budget, std::vector<Planned>* planned);
  // Frees `r`'s blocks and puts it back in waiting for recompute.
  void Preempt(Request* r);
  void InsertWaiting(Request* r);
  void ExpireDeadlines(absl::Time now);
  RequestOutput Finish(Request* r, FinishReason reason, absl::Time now);
  Batch BuildBatch(const std::vector<Planned>& planned);

  const SchedulerOptions options_;
  KvCacheManager* kv_;
  absl::flat_hash_map<RequestId, std::unique_ptr<Request>> requests_;
  std::vector<Request*> waiting_;  // Sorted: priority desc, then order asc.
  std::vector<Request*> running_;
  std::vector<RequestOutput> aborted_;
  int64_t next_order_ = 0;
  int64_t num_preemptions_ = 0;
};

}  // namespace hkv
