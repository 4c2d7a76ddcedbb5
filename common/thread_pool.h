#pragma once
// ThreadPool: a fixed set of threads for data-parallel loops (the CPU worker's math, the CUDA
// worker's per-layer decode plans).
//
// Thread-safe for one caller at a time (the worker's step); ParallelFor blocks until every
// chunk is done, so callers may capture locals by reference.

#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace hkv {

class ThreadPool {
 public:
  explicit ThreadPool(int num_threads);  // num_threads - 1 helpers; the caller is the last one.
  ~ThreadPool();

  int num_threads() const { return static_cast<int>(threads_.size()) + 1; }
  // Calls fn(begin, end) over [0, n) split into contiguous chunks, one per thread.
  void ParallelFor(int64_t n, const std::function<void(int64_t, int64_t)>& fn);

 private:
  void Run(int index);

  std::vector<std::thread> threads_;
  std::mutex mu_;
  std::condition_variable work_cv_, done_cv_;
  const std::function<void(int64_t, int64_t)>* fn_ = nullptr;
  int64_t n_ = 0;
  uint64_t generation_ = 0;
  int pending_ = 0;
  bool stop_ = false;
};

}  // namespace hkv
