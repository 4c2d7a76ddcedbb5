#pragma once
// Opt-in GPU time per phase of the forward pass (CudaWorker::set_phase_profile): Mark(name)
// records an event on the stream before each phase, Collect() (after the step's sync) adds
// the time between consecutive marks to the phase of the earlier one. Off (the default), Mark
// is one branch and nothing is recorded. The events sit between kernels, so they stop the
// kernels' launch overlap (kernels/cuda_common.cuh): phase times add up to more than an
// unprofiled step; compare shares, and whole steps timed without the profile.
//
// Thread-compatible: used by the worker's thread only.

#include <cuda_runtime.h>

#include <cstdint>
#include <string>
#include <vector>

namespace hkv::cuda_internal {

class PhaseTimer {
 public:
  struct Phase {
    std::string name;
    int64_t calls = 0;
    double us = 0;
  };

  PhaseTimer() = default;
  PhaseTimer(const PhaseTimer&) = delete;
  PhaseTimer& operator=(const PhaseTimer&) = delete;
  ~PhaseTimer();

  bool on() const { return on_; }
  // Starts or stops profiling; starting clears the totals.
  void Enable(bool on);
  // Drops the marks of a step that never reached Collect (it failed part-way).
  void BeginStep() { marks_.clear(); }
  // Records the start of phase `name` (a string literal) on `stream`; nothing when off.
  void Mark(const char* name, cudaStream_t stream) {
    if (on_) Record(name, stream);
  }
  // Adds the step's marks to the totals (the stream must be synchronised) and counts a step.
  cudaError_t Collect();
  int64_t steps() const { return steps_; }
  // Totals per phase, in order of first appearance.
  const std::vector<Phase>& phases() const { return phases_; }

 private:
  void Record(const char* name, cudaStream_t stream);

  bool on_ = false;
  cudaError_t error_ = cudaSuccess;  // first failure of a Record, reported by Collect
  std::vector<cudaEvent_t> events_;  // pool, grown on demand
  std::vector<const char*> marks_;   // this step's, one per used event
  std::vector<Phase> phases_;
  int64_t steps_ = 0;
};

}  // namespace hkv::cuda_internal
