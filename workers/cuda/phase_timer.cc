#include "workers/cuda/phase_timer.h"

namespace hkv::cuda_internal {

PhaseTimer::~PhaseTimer() {
  for (cudaEvent_t e : events_) cudaEventDestroy(e);
}

void PhaseTimer::Enable(bool on) {
  on_ = on;
  marks_.clear();
  if (on) {
    phases_.clear();
    steps_ = 0;
    error_ = cudaSuccess;
  }
}

void PhaseTimer::Record(const char* name, cudaStream_t stream) {
  if (marks_.size() == events_.size()) {
    cudaEvent_t e = nullptr;
    const cudaError_t c = cudaEventCreate(&e);
    if (c != cudaSuccess) {
      if (error_ == cudaSuccess) error_ = c;
      return;
    }
    events_.push_back(e);
  }
  const cudaError_t r = cudaEventRecord(events_[marks_.size()], stream);
  if (r != cudaSuccess) {
    if (error_ == cudaSuccess) error_ = r;
    return;
  }
  marks_.push_back(name);
}

cudaError_t PhaseTimer::Collect() {
  if (!on_) return cudaSuccess;
  const cudaError_t failed = error_;
  error_ = cudaSuccess;
  for (size_t i = 0; i + 1 < marks_.size(); ++i) {
    float ms = 0;
    const cudaError_t e = cudaEventElapsedTime(&ms, events_[i], events_[i + 1]);
    if (e != cudaSuccess) {
      marks_.clear();
      return e;
    }
    Phase* p = nullptr;
    for (Phase& q : phases_) {
      if (q.name == marks_[i]) p = &q;
    }
    if (p == nullptr) {
      phases_.push_back({marks_[i], 0, 0});
      p = &phases_.back();
    }
    ++p->calls;
    p->us += ms * 1e3;
  }
  if (!marks_.empty()) ++steps_;
  marks_.clear();
  return failed;
}

}  // namespace hkv::cuda_internal
