#include "kernels/cuda_common.cuh"
#include "kernels/init_ops.h"

namespace hkv::kernels {
namespace {

constexpr int kThreads = 256;
constexpr int kPerThread = 4;

__device__ __forceinline__ float DeviceUniform(uint64_t seed, uint64_t index, float scale) {
  uint64_t z = seed + 0x9E3779B97F4A7C15ULL * (index + 1);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  z ^= z >> 31;
  return scale * (static_cast<float>(z >> 40) / 8388608.0f - 1.0f);
}

template <typename T>
__global__ void FillUniformKernel(T* out, int64_t ld, int64_t rows, int64_t cols, int64_t row0,
                                  int64_t col0, int64_t cols_total, uint64_t seed, float scale,
                                  float fill) {
  const int64_t n = rows * cols;
  const int64_t first = (static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x) * kPerThread;
#pragma unroll
  for (int i = 0; i < kPerThread; ++i) {
    const int64_t e = first + i;
    if (e >= n) return;
    const int64_t r = e / cols, c = e % cols;
    const float v =
        scale == 0.0f
            ? fill
            : DeviceUniform(seed, static_cast<uint64_t>((row0 + r) * cols_total + col0 + c), scale);
    out[r * ld + c] = FromFloat<T>(v);
  }
}

}  // namespace

cudaError_t FillUniformMatrix(DType dtype, void* out, int64_t ld, int64_t rows, int64_t cols,
                              int64_t row0, int64_t col0, int64_t cols_total, uint64_t seed,
                              float scale, float fill, cudaStream_t stream) {
  if (out == nullptr || rows < 0 || cols < 0 || ld < cols || row0 < 0 || col0 < 0 ||
      col0 + cols > cols_total) {
    return cudaErrorInvalidValue;
  }
  const int64_t n = rows * cols;
  if (n == 0) return cudaSuccess;
  const int64_t per_block = static_cast<int64_t>(kThreads) * kPerThread;
  const int64_t grid = (n + per_block - 1) / per_block;
  if (grid > 0x7fffffff) return cudaErrorInvalidValue;
  return DispatchDType(dtype, [&](auto t) {
    using T = decltype(t);
    FillUniformKernel<T><<<static_cast<unsigned>(grid), kThreads, 0, stream>>>(
        static_cast<T*>(out), ld, rows, cols, row0, col0, cols_total, seed, scale, fill);
    return cudaGetLastError();
  });
}

}  // namespace hkv::kernels
