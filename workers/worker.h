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
};

}  // namespace hkv
