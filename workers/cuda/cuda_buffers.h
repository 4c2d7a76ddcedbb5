#pragma once
// Host and device memory for the CUDA worker: grow-only device buffers (with a generation that
// tells CUDA graphs their addresses moved), pinned host buffers, and StepInputs, which lays a
// step's inputs out identically in pinned memory and on the device and sends them in one copy.
// Also the status macros for CUDA and cuBLAS calls (failures are UNAVAILABLE: the device is
// unusable) and bf16 conversion. Internal to workers/ (CUDA builds).
//
// Thread-compatible: each object is used by one thread (its worker's).

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/status_macros.h"

namespace hkv::cuda_internal {

inline constexpr size_t kAlign = 256;

// A failing CUDA or cuBLAS call means the device (or the driver state) is unusable.
#define HKV_CUDA_RETURN_IF_ERROR(expr)                                                     \
  do {                                                                                     \
    const cudaError_t hkv_cuda_err_ = (expr);                                              \
    if (hkv_cuda_err_ != cudaSuccess) {                                                    \
      return absl::UnavailableError(                                                       \
          absl::StrCat("CUDA error in ", #expr, ": ", cudaGetErrorString(hkv_cuda_err_))); \
    }                                                                                      \
  } while (0)

#define HKV_CUBLAS_RETURN_IF_ERROR(expr)                                                   \
  do {                                                                                     \
    const cublasStatus_t hkv_cublas_st_ = (expr);                                          \
    if (hkv_cublas_st_ != CUBLAS_STATUS_SUCCESS) {                                         \
      return absl::UnavailableError(                                                       \
          absl::StrCat("cuBLAS error ", static_cast<int>(hkv_cublas_st_), " in ", #expr)); \
    }                                                                                      \
  } while (0)

inline size_t AlignUp(size_t n) { return (n + kAlign - 1) / kAlign * kAlign; }

inline uint16_t ToBf16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  if ((bits & 0x7fffffff) > 0x7f800000) return 0x7fc0;  // NaN.
  bits += 0x7fff + ((bits >> 16) & 1);                  // Round to nearest even.
  return static_cast<uint16_t>(bits >> 16);
}

// A grow-only device allocation. `generation` counts reallocations: a CUDA graph that captured
// the old address must be re-captured.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer() {
    if (ptr_ != nullptr) cudaFree(ptr_);
  }
  absl::Status Reserve(size_t bytes) {
    if (bytes <= bytes_) return absl::OkStatus();
    if (ptr_ != nullptr) cudaFree(ptr_);
    ptr_ = nullptr;
    bytes_ = 0;
    ++generation_;
    const size_t want = std::max<size_t>(bytes, kAlign);
    const cudaError_t e = cudaMalloc(&ptr_, want);
    if (e != cudaSuccess) {
      cudaGetLastError();
      return absl::ResourceExhaustedError(absl::StrFormat(
          "cudaMalloc of %.1f MiB for step buffers failed (%s): lower --max-batch-tokens or "
          "--gpu-memory-utilization",
          want / 1048576.0, cudaGetErrorString(e)));
    }
    bytes_ = want;
    return absl::OkStatus();
  }
  template <typename T = void>
  T* get() const {
    return static_cast<T*>(ptr_);
  }
  size_t bytes() const { return bytes_; }
  uint64_t generation() const { return generation_; }

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
  uint64_t generation_ = 0;
};

// Pinned host memory.
class PinnedBuffer {
 public:
  PinnedBuffer() = default;
  PinnedBuffer(const PinnedBuffer&) = delete;
  PinnedBuffer& operator=(const PinnedBuffer&) = delete;
  ~PinnedBuffer() {
    if (ptr_ != nullptr) cudaFreeHost(ptr_);
  }
  absl::Status Reserve(size_t bytes) {
    if (bytes <= bytes_) return absl::OkStatus();
    if (ptr_ != nullptr) cudaFreeHost(ptr_);
    ptr_ = nullptr;
    bytes_ = 0;
    const size_t want = std::max<size_t>(bytes, kAlign);
    HKV_CUDA_RETURN_IF_ERROR(cudaHostAlloc(&ptr_, want, cudaHostAllocDefault));
    bytes_ = want;
    return absl::OkStatus();
  }
  char* get() const { return static_cast<char*>(ptr_); }

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

// A step's inputs, laid out identically in pinned host memory and on the device and sent in
// one copy. Begin() sizes both for the step; Put/Take hand out consecutive aligned slices, so
// the same sequence of calls yields the same device addresses (what a CUDA graph relies on).
class StepInputs {
 public:
  absl::Status Begin(size_t bytes) {
    HKV_RETURN_IF_ERROR(host_.Reserve(bytes));
    HKV_RETURN_IF_ERROR(device_.Reserve(bytes));
    capacity_ = bytes;
    used_ = 0;
    hole_begin_ = hole_end_ = 0;
    return absl::OkStatus();
  }
  // Reserves n elements; returns the device address and sets *host to the host staging.
  template <typename T>
  T* Take(size_t n, T** host) {
    const size_t offset = used_;
    used_ += AlignUp(n * sizeof(T));
    if (used_ > capacity_) std::abort();  // Begin() was given the sum of the slices.
    *host = reinterpret_cast<T*>(host_.get() + offset);
    return reinterpret_cast<T*>(device_.get<char>() + offset);
  }
  // Reserves n elements that the device fills itself: Upload skips them. One per step.
  template <typename T>
  T* TakeDeviceOnly(size_t n) {
    T* host = nullptr;
    hole_begin_ = used_;
    T* dev = Take<T>(n, &host);
    hole_end_ = used_;
    return dev;
  }
  template <typename T>
  const T* Put(const std::vector<T>& v) {
    T* host = nullptr;
    T* dev = Take<T>(v.size(), &host);
    if (!v.empty()) std::memcpy(host, v.data(), v.size() * sizeof(T));
    return dev;
  }
  absl::Status Upload(cudaStream_t stream) {
    // [0, hole_begin_) and [hole_end_, used_): the device-only slice is not sent.
    const size_t head = hole_end_ > hole_begin_ ? hole_begin_ : used_;
    if (head > 0) {
      HKV_CUDA_RETURN_IF_ERROR(
          cudaMemcpyAsync(device_.get(), host_.get(), head, cudaMemcpyHostToDevice, stream));
    }
    if (hole_end_ > hole_begin_ && used_ > hole_end_) {
      HKV_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(device_.get<char>() + hole_end_,
                                               host_.get() + hole_end_, used_ - hole_end_,
                                               cudaMemcpyHostToDevice, stream));
    }
    return absl::OkStatus();
  }
  size_t capacity() const { return capacity_; }
  uint64_t generation() const { return device_.generation(); }

 private:
  PinnedBuffer host_;
  DeviceBuffer device_;
  size_t capacity_ = 0, used_ = 0;
  size_t hole_begin_ = 0, hole_end_ = 0;  // the device-only slice (TakeDeviceOnly), if any
};

template <typename T>
inline size_t SliceBytes(size_t n) {
  return AlignUp(n * sizeof(T));
}

inline absl::Status UploadBf16(const std::vector<float>& host, DeviceBuffer* out) {
  std::vector<uint16_t> bf(host.size());
  for (size_t i = 0; i < host.size(); ++i) bf[i] = ToBf16(host[i]);
  HKV_RETURN_IF_ERROR(out->Reserve(bf.size() * 2));
  HKV_CUDA_RETURN_IF_ERROR(
      cudaMemcpy(out->get(), bf.data(), bf.size() * 2, cudaMemcpyHostToDevice));
  return absl::OkStatus();
}

}  // namespace hkv::cuda_internal
