#pragma once
// Worker: runs the model for one engine step on one device (CPU reference or CUDA).
//
// Thread-compatible: one caller at a time (the engine thread). Execute reads the Batch, which
// the caller keeps alive and unchanged for the call.

#include <string>

#include "absl/status/statusor.h"
#include "common/batch.h"
#include "workers/model_config.h"

namespace hkv {

class Worker {
 public:
  virtual ~Worker() = default;
  // The model this worker runs.
  virtual const ModelConfig& config() const = 0;
  // Runs one step (see common/batch.h) and returns the sampled tokens. A non-OK status means
  // the device failed; the engine then stops serving.
  virtual absl::StatusOr<BatchResult> Execute(const Batch& batch) = 0;
  // "cpu", "cuda:0", ...
  virtual std::string name() const = 0;
  // Whether steps may carry adaptive (adakv) selections (SequenceStep::layer_blocks).
  virtual bool SupportsAdaptiveSelection() const { return true; }
  // Whether the worker can still run steps, checked by the engine thread between steps while it
  // is idle (a multi-node group notices a follower that went away before the next request).
  // A non-OK status is treated like a failed step.
  virtual absl::Status Liveness() { return absl::OkStatus(); }
  // Thread-safe, unlike the rest: asks a step in progress on another thread to give up soon
  // (a peer it waits for is gone). Workers whose steps cannot hang ignore it.
  virtual void CancelStep() {}
};

}  // namespace hkv
