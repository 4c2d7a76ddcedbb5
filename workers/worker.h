#pragma once
// Worker: runs the model for one engine step on one device (CPU reference or CUDA).
//
// Thread-compatible: one caller at a time (the engine thread). Execute reads the Batch, which
// the caller keeps alive and unchanged for the call.

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "common/batch.h"
#include "model/model_config.h"

namespace hkv {

// The KV pool a worker can hold: bytes of one block (K and V of block_size tokens of one KV
// head) and how many blocks fit.
struct KvCapacity {
  int64_t bytes_per_block = 0;
  int64_t max_blocks = 0;
};

class Worker {
 public:
  virtual ~Worker() = default;
  // The model this worker runs.
  virtual const ModelConfig& config() const = 0;
  // Runs one step (see common/batch.h) and returns the sampled tokens. A non-OK status means
  // the device failed; the engine then stops serving.
  virtual absl::StatusOr<BatchResult> Execute(const Batch& batch) = 0;
  // Reports the KV pool this worker can hold. The engine builder decides the pool's size from
  // it and its options, then calls AllocateKvPool once, before the first step.
  virtual absl::StatusOr<KvCapacity> ReportKvCapacity() const {
    return absl::UnimplementedError(name() + " does not report its KV capacity");
  }
  // Gives the worker a pool of `num_blocks` blocks (the engine's ids 0..num_blocks-1).
  // RESOURCE_EXHAUSTED above the reported capacity. REQUIRES: no step has run yet.
  virtual absl::Status AllocateKvPool(int64_t num_blocks) {
    return absl::UnimplementedError(name() + " does not allocate a KV pool");
  }
  // "cpu", "cuda:0", ...
  virtual std::string name() const = 0;
  // Whether steps may carry adaptive (adakv) selections (SequenceStep::layer_blocks).
  virtual bool SupportsAdaptiveSelection() const { return true; }
  // Whether steps may carry page-table deltas (Batch::kv_delta) instead of the full CSR: the
  // worker then keeps every sequence's tables itself, applying each step's delta in order.
  virtual bool AcceptsPageTableDeltas() const { return false; }
  // Whether the worker can still run steps, checked by the engine thread between steps while it
  // is idle (a multi-node group notices a follower that went away before the next request).
  // A non-OK status is treated like a failed step.
  virtual absl::Status Liveness() { return absl::OkStatus(); }
  // Async steps: whether Launch / Await work. The engine then launches step N+1 before it
  // awaits step N (scheduling overlaps execution), and step N+1 may carry kPendingToken inputs
  // (common/batch.h) that the worker resolves from step N's samples.
  virtual bool SupportsAsyncSteps() const { return false; }
  // Starts a step and returns once it is queued; its results come from Await(), oldest first.
  // At most two steps are launched and not awaited; the caller keeps each Batch alive and
  // unchanged until its Await() returns. A non-OK status (from either) means the device failed,
  // as for Execute; the steps still launched are then abandoned.
  virtual absl::Status Launch(const Batch& batch) {
    return absl::UnimplementedError(name() + " runs no async steps");
  }
  virtual absl::StatusOr<BatchResult> Await() {
    return absl::UnimplementedError(name() + " runs no async steps");
  }
  // Thread-safe, unlike the rest: asks a step in progress on another thread to give up soon
  // (a peer it waits for is gone). Workers whose steps cannot hang ignore it.
  virtual void CancelStep() {}
};

}  // namespace hkv
