#pragma once
// Helpers for the kernels' GPU tests: device buffers, skipping without a GPU, random data in
// the storage dtypes, and the relative-error check. Test-only.
//
// Not thread-safe; one test thread.

#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "kernels/dtype.h"
#include "kernels/reference.h"

namespace hkv::kernels::testing {

// True when a CUDA device is usable.
inline bool HaveGpu() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
}

#define HKV_REQUIRE_GPU()                                                   \
  do {                                                                      \
    if (!::hkv::kernels::testing::HaveGpu()) GTEST_SKIP() << "no CUDA GPU"; \
  } while (0)

#define HKV_CUDA_OK(expr)                                                        \
  do {                                                                           \
    const cudaError_t hkv_e = (expr);                                            \
    ASSERT_EQ(hkv_e, cudaSuccess) << #expr << ": " << cudaGetErrorString(hkv_e); \
  } while (0)

// Owns a device allocation of n elements of T.
template <typename T>
class DeviceArray {
 public:
  explicit DeviceArray(size_t n = 0) { Resize(n); }
  ~DeviceArray() { cudaFree(ptr_); }
  DeviceArray(const DeviceArray&) = delete;
  DeviceArray& operator=(const DeviceArray&) = delete;
  DeviceArray(DeviceArray&& o) noexcept : ptr_(o.ptr_), n_(o.n_) {
    o.ptr_ = nullptr;
    o.n_ = 0;
  }
  void Resize(size_t n) {
    cudaFree(ptr_);
    ptr_ = nullptr;
    n_ = n;
    if (n > 0 && cudaMalloc(&ptr_, n * sizeof(T)) != cudaSuccess) ptr_ = nullptr;
  }
  T* get() const { return ptr_; }
  size_t size() const { return n_; }
  cudaError_t Upload(const std::vector<T>& v) {
    if (v.size() > n_) return cudaErrorInvalidValue;
    return cudaMemcpy(ptr_, v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice);
  }
  std::vector<T> Download() const {
    std::vector<T> v(n_);
    cudaMemcpy(v.data(), ptr_, n_ * sizeof(T), cudaMemcpyDeviceToHost);
    return v;
  }
  cudaError_t Fill(uint8_t byte) { return cudaMemset(ptr_, byte, n_ * sizeof(T)); }

 private:
  T* ptr_ = nullptr;
  size_t n_ = 0;
};

// Converts floats to storage bits of `dtype`.
inline std::vector<uint16_t> ToStorage(const std::vector<float>& f, DType dtype) {
  std::vector<uint16_t> out(f.size());
  for (size_t i = 0; i < f.size(); ++i) {
    out[i] = dtype == DType::kBf16 ? ref::FloatToBf16(f[i]) : ref::FloatToHalf(f[i]);
  }
  return out;
}

// Converts storage bits of `dtype` to floats.
inline std::vector<float> FromStorage(const std::vector<uint16_t>& h, DType dtype) {
  std::vector<float> out(h.size());
  for (size_t i = 0; i < h.size(); ++i) {
    out[i] = dtype == DType::kBf16 ? ref::Bf16ToFloat(h[i]) : ref::HalfToFloat(h[i]);
  }
  return out;
}

// Random floats in [-scale, scale], rounded to `dtype` so CPU and GPU see the same values.
inline std::vector<float> RandomValues(size_t n, float scale, DType dtype, std::mt19937& rng) {
  std::uniform_real_distribution<float> dist(-scale, scale);
  std::vector<float> f(n);
  for (float& x : f) x = dist(rng);
  return FromStorage(ToStorage(f, dtype), dtype);
}

// ||a - b|| / ||b||; +inf when a holds a non-finite value.
inline double RelError(const std::vector<float>& a, const std::vector<float>& b) {
  double num = 0.0, den = 0.0;
  for (size_t i = 0; i < a.size(); ++i) {
    if (!std::isfinite(a[i])) return INFINITY;
    num += (static_cast<double>(a[i]) - b[i]) * (static_cast<double>(a[i]) - b[i]);
    den += static_cast<double>(b[i]) * b[i];
  }
  return std::sqrt(num / std::max(den, 1e-30));
}

// Tolerance on RelError for outputs stored in `dtype`.
inline double Tolerance(DType dtype) { return dtype == DType::kBf16 ? 1e-2 : 2e-3; }

inline const char* Name(DType dtype) { return dtype == DType::kBf16 ? "bf16" : "fp16"; }

}  // namespace hkv::kernels::testing
