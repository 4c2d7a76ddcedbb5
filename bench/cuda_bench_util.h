#pragma once
// Helpers of the GPU benches that time kernels with CUDA events (kernel_bench,
// prefill_phase_bench, gemm_rates): error checks that stop the bench, random bf16 device buffers,
// uploads, a per-phase event timer and the median of timed calls. Bench code only (exits on
// errors).

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <random>
#include <string>
#include <utility>
#include <vector>

namespace hkv::bench {

#define CHECK_CUDA(expr)                                                                        \
  do {                                                                                          \
    const cudaError_t e = (expr);                                                               \
    if (e != cudaSuccess) {                                                                     \
      std::fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #expr, cudaGetErrorString(e)); \
      std::exit(1);                                                                             \
    }                                                                                           \
  } while (0)
#define CHECK_CUBLAS(expr)                                                     \
  do {                                                                         \
    const cublasStatus_t s = (expr);                                           \
    if (s != CUBLAS_STATUS_SUCCESS) {                                          \
      std::fprintf(stderr, "%s:%d %s: cuBLAS %d\n", __FILE__, __LINE__, #expr, \
                   static_cast<int>(s));                                       \
      std::exit(1);                                                            \
    }                                                                          \
  } while (0)

// Device buffer of n random bf16 values: bits `high` plus a random `low_mask` part, random sign
// (a 4M-value pattern repeated).
inline void* RandomBf16(size_t n, uint32_t seed, uint16_t high, uint16_t low_mask) {
  std::vector<uint16_t> h(std::min<size_t>(n, 1 << 22));
  std::mt19937 rng(seed);
  for (auto& x : h) x = static_cast<uint16_t>(high + (rng() & low_mask)) ^ (rng() & 0x8000);
  void* d = nullptr;
  CHECK_CUDA(cudaMalloc(&d, n * 2));
  for (size_t off = 0; off < n; off += h.size()) {
    CHECK_CUDA(cudaMemcpy(static_cast<uint16_t*>(d) + off, h.data(),
                          std::min(h.size(), n - off) * 2, cudaMemcpyHostToDevice));
  }
  return d;
}

// Small random values (|x| < 1/32: activations stay finite through 32 layers).
inline void* Random(size_t n, uint32_t seed) { return RandomBf16(n, seed, 0x3c00, 0xff); }

template <typename T>
T* Upload(const std::vector<T>& v) {
  T* d = nullptr;
  CHECK_CUDA(cudaMalloc(&d, std::max<size_t>(1, v.size()) * sizeof(T)));
  CHECK_CUDA(cudaMemcpy(d, v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice));
  return d;
}

// Phase timer: Mark(name) closes the running phase and opens `name`; times add up per name.
// A phase named "end" is not counted (it spans the host's work between two chunks).
class Phases {
 public:
  explicit Phases(cudaStream_t s) : stream_(s) {}
  void Mark(const std::string& name) {
    cudaEvent_t ev;
    CHECK_CUDA(cudaEventCreate(&ev));
    CHECK_CUDA(cudaEventRecord(ev, stream_));
    marks_.push_back({name, ev});
  }
  // Sums the phases (after a sync); the last mark closes the last phase.
  std::map<std::string, double> Sum() {
    CHECK_CUDA(cudaStreamSynchronize(stream_));
    std::map<std::string, double> ms;
    for (size_t i = 0; i + 1 < marks_.size(); ++i) {
      if (marks_[i].first == "end") continue;  // host work between chunks
      float t = 0;
      CHECK_CUDA(cudaEventElapsedTime(&t, marks_[i].second, marks_[i + 1].second));
      ms[marks_[i].first] += t;
      if (order_.size() < 64 &&
          std::find(order_.begin(), order_.end(), marks_[i].first) == order_.end()) {
        order_.push_back(marks_[i].first);
      }
    }
    for (auto& m : marks_) CHECK_CUDA(cudaEventDestroy(m.second));
    marks_.clear();
    return ms;
  }
  const std::vector<std::string>& order() const { return order_; }

 private:
  cudaStream_t stream_;
  std::vector<std::pair<std::string, cudaEvent_t>> marks_;
  std::vector<std::string> order_;
};

// Median ms of `reps` calls of `call` (returns whether it ran), each timed alone with events,
// after `warmup` untimed ones; -1 when a call fails.
template <typename Call>
double MedianMs(cudaStream_t stream, int warmup, int reps, Call call) {
  cudaEvent_t e0, e1;
  CHECK_CUDA(cudaEventCreate(&e0));
  CHECK_CUDA(cudaEventCreate(&e1));
  std::vector<float> t;
  for (int i = 0; i < warmup + reps; ++i) {
    CHECK_CUDA(cudaEventRecord(e0, stream));
    if (!call()) {
      t.clear();
      break;
    }
    CHECK_CUDA(cudaEventRecord(e1, stream));
    CHECK_CUDA(cudaEventSynchronize(e1));
    float ms = 0;
    CHECK_CUDA(cudaEventElapsedTime(&ms, e0, e1));
    if (i >= warmup) t.push_back(ms);
  }
  CHECK_CUDA(cudaEventDestroy(e0));
  CHECK_CUDA(cudaEventDestroy(e1));
  if (t.empty()) return -1.0;
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

}  // namespace hkv::bench
