// Decode products with the norm prologue and the residual / SwiGLU epilogues; see gemv_fused.h.

#include <cuda_bf16.h>

#include "kernels/cuda_common.cuh"
#include "kernels/gemv.cuh"
#include "kernels/gemv_fused.h"

namespace hkv::kernels {
namespace {

using gemv_internal::DotRows;
using gemv_internal::kThreads;
using gemv_internal::kWarps;

constexpr int kMaxSmemBytes = 48 * 1024;  // without the opt-in attribute

enum class Epilogue { kStore, kAddResidual, kSwiGlu };

struct FusedParams {
  const void* x;  // input rows [m, k] at ldx (normalised first when the kernel has the prologue)
  int64_t ldx;
  const void* norm_w;  // [k]
  float eps;
  const void* w;  // [n (x2 for SwiGLU), k] at ldw
  int64_t ldw;
  void* out;  // [m, n] at ldo: the output, or the residual updated in place
  int64_t ldo;
  int n, k;
};

// Normalises the M rows of x into `sa` [M, k] (T, row stride k) as RmsNormKernel does without a
// residual: inv = rsqrt(mean(x^2) + eps), out = round(x * inv * w). All threads take part. x is
// read with coherent loads: the caller waited on the previous kernel, which wrote it, after
// its first weight loads (DotRows's after_first_loads).
template <typename T, int M>
__device__ __forceinline__ void NormRowsToShared(const T* __restrict__ x, int64_t ldx,
                                                 const T* __restrict__ norm_w, float eps, int k,
                                                 T* sa) {
  __shared__ float scratch[32];
  __shared__ float inv[M];
#pragma unroll
  for (int m = 0; m < M; ++m) {
    float ss = 0.0f;
    for (int c = threadIdx.x * 8; c < k; c += kThreads * 8) {
      const uint4 v = LoadCoherent16(x + m * ldx + c);  // the previous kernel's output
      *reinterpret_cast<uint4*>(sa + m * k + c) = v;
      float f[8];
      Unpack8<T>(v, f);
#pragma unroll
      for (int i = 0; i < 8; ++i) ss += f[i] * f[i];
    }
    const float total = BlockSum(ss, scratch);
    if (threadIdx.x == 0) inv[m] = rsqrtf(total / k + eps);
  }
  __syncthreads();
#pragma unroll
  for (int m = 0; m < M; ++m) {
    const float s = inv[m];
    for (int c = threadIdx.x * 8; c < k; c += kThreads * 8) {
      float f[8], w[8];
      Unpack8<T>(*reinterpret_cast<const uint4*>(sa + m * k + c), f);
      Unpack8<T>(LoadNc16(norm_w + c), w);
#pragma unroll
      for (int i = 0; i < 8; ++i) f[i] = f[i] * s * w[i];
      *reinterpret_cast<uint4*>(sa + m * k + c) = Pack8<T>(f);
    }
  }
  __syncthreads();
}

// One warp computes kCols output columns for all M rows; kNorm adds the norm prologue.
template <typename T, int M, int kCols, bool kNorm, Epilogue kEpi>
__global__ void __launch_bounds__(kThreads) FusedGemvKernel(FusedParams p) {
  constexpr int R = kEpi == Epilogue::kSwiGlu ? 2 * kCols : kCols;  // weight rows per warp
  extern __shared__ uint4 smem[];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int col0 = (blockIdx.x * kWarps + warp) * kCols;
  const T* w = static_cast<const T*>(p.w);
  const T* rows[R];
#pragma unroll
  for (int c = 0; c < kCols; ++c) {
    const int col = min(col0 + c, p.n - 1);  // past n: a valid row, never stored
    rows[c] = w + static_cast<int64_t>(col) * p.ldw;
    if constexpr (kEpi == Epilogue::kSwiGlu) {
      rows[kCols + c] = w + static_cast<int64_t>(p.n + col) * p.ldw;
    }
  }
  // The first weight loads go out before the wait (DotRows, kWaitInside): weights never
  // depend on the previous kernel, so under programmatic dependent launch they fly while it
  // drains; then the wait and, with kNorm, the norm prologue of the whole CTA.
  T* sa = reinterpret_cast<T*>(smem);
  auto wait_then_normalise = [&] {
    WaitForPriorGrid();
    if constexpr (kNorm) {
      NormRowsToShared<T, M>(static_cast<const T*>(p.x), p.ldx, static_cast<const T*>(p.norm_w),
                             p.eps, p.k, sa);
    }
  };
  // Warps past n (their rows clamped to a valid one) run the product too and store nothing,
  // so every thread meets the prologue's barriers at the same place.
  const T* a = kNorm ? sa : static_cast<const T*>(p.x);
  const int64_t lda = kNorm ? p.k : p.ldx;
  float acc[R][M] = {};
  DotRows<T, M, R, kNorm, /*kWaitInside=*/true>(a, lda, rows, p.k, lane, acc, wait_then_normalise);
  AllowDependents();  // the weight stream is done; only the stores remain
  if (lane != 0) return;
  T* out = static_cast<T*>(p.out);
#pragma unroll
  for (int c = 0; c < kCols; ++c) {
    const int col = col0 + c;
    if (col >= p.n) break;
#pragma unroll
    for (int m = 0; m < M; ++m) {
      T* o = out + m * p.ldo + col;
      if constexpr (kEpi == Epilogue::kStore) {
        *o = FromFloat<T>(acc[c][m]);
      } else if constexpr (kEpi == Epilogue::kAddResidual) {
        *o = FromFloat<T>(ToFloat<T>(*o) + ToFloat<T>(FromFloat<T>(acc[c][m])));
      } else {
        const float g = ToFloat<T>(FromFloat<T>(acc[c][m]));
        const float u = ToFloat<T>(FromFloat<T>(acc[kCols + c][m]));
        *o = FromFloat<T>(g / (1.0f + __expf(-g)) * u);
      }
    }
  }
}

template <bool kNorm, Epilogue kEpi, int M, int kCols>
cudaError_t LaunchCols(const FusedParams& p, cudaStream_t stream) {
  using T = __nv_bfloat16;
  const dim3 grid((p.n + kWarps * kCols - 1) / (kWarps * kCols));
  const size_t smem = kNorm ? static_cast<size_t>(M) * p.k * sizeof(T) : 0;
  return LaunchOverlapped(FusedGemvKernel<T, M, kCols, kNorm, kEpi>, grid, dim3(kThreads), smem,
                          stream, p);
}

template <bool kNorm, Epilogue kEpi, int M>
cudaError_t LaunchRows(const FusedParams& p, int cols, cudaStream_t stream) {
  switch (cols) {
    case 1:
      return LaunchCols<kNorm, kEpi, M, 1>(p, stream);
    case 2:
      return LaunchCols<kNorm, kEpi, M, 2>(p, stream);
    case 4:
      return LaunchCols<kNorm, kEpi, M, 4>(p, stream);
    default:
      return cudaErrorInvalidValue;
  }
}

template <bool kNorm, Epilogue kEpi>
cudaError_t Launch(const FusedParams& p, int m, int cols, cudaStream_t stream) {
  switch (m) {
    case 1:
      return LaunchRows<kNorm, kEpi, 1>(p, cols, stream);
    case 2:
      return LaunchRows<kNorm, kEpi, 2>(p, cols, stream);
    case 3:
      return LaunchRows<kNorm, kEpi, 3>(p, cols, stream);
    case 4:
      return LaunchRows<kNorm, kEpi, 4>(p, cols, stream);
    default:
      return cudaErrorInvalidValue;
  }
}

bool Aligned(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// Common argument checks; the input row pointer and the weight must allow 16-byte loads.
bool ValidArgs(DType dtype, const void* x, int64_t ldx, const void* w, int64_t ldw, int64_t ldo,
               int32_t m, int32_t n, int32_t k, bool norm) {
  return FusedGemvApplies(dtype, m, k, norm) && n >= 0 && ldx >= k && ldx % 8 == 0 && ldw >= k &&
         ldw % 8 == 0 && ldo >= n && Aligned(x) && Aligned(w);
}

}  // namespace

bool FusedGemvApplies(DType dtype, int32_t m, int32_t k, bool norm_prologue) {
  return dtype == DType::kBf16 && m >= 1 && m <= kFusedGemvMaxRows && k > 0 && k % 8 == 0 &&
         (!norm_prologue || static_cast<int64_t>(m) * k * 2 <= kMaxSmemBytes);
}

cudaError_t RmsNormGemv(DType dtype, const void* x, int64_t ldx, const void* norm_w, float eps,
                        const void* w, int64_t ldw, void* out, int64_t ldo, int32_t m, int32_t n,
                        int32_t k, int32_t cols_per_warp, cudaStream_t stream) {
  if (!ValidArgs(dtype, x, ldx, w, ldw, ldo, m, n, k, true) || !Aligned(norm_w)) {
    return cudaErrorInvalidValue;
  }
  if (n == 0) return cudaSuccess;
  const FusedParams p{x, ldx, norm_w, eps, w, ldw, out, ldo, n, k};
  return Launch<true, Epilogue::kStore>(p, m, cols_per_warp, stream);
}

cudaError_t RmsNormGemvSwiGlu(DType dtype, const void* x, int64_t ldx, const void* norm_w,
                              float eps, const void* w_gate_up, int64_t ldw, void* out, int64_t ldo,
                              int32_t m, int32_t n, int32_t k, int32_t cols_per_warp,
                              cudaStream_t stream) {
  if (!ValidArgs(dtype, x, ldx, w_gate_up, ldw, ldo, m, n, k, true) || !Aligned(norm_w)) {
    return cudaErrorInvalidValue;
  }
  if (n == 0) return cudaSuccess;
  const FusedParams p{x, ldx, norm_w, eps, w_gate_up, ldw, out, ldo, n, k};
  return Launch<true, Epilogue::kSwiGlu>(p, m, cols_per_warp, stream);
}

cudaError_t GemvAddResidual(DType dtype, const void* a, int64_t lda, const void* w, int64_t ldw,
                            void* residual, int64_t ldr, int32_t m, int32_t n, int32_t k,
                            int32_t cols_per_warp, cudaStream_t stream) {
  if (!ValidArgs(dtype, a, lda, w, ldw, ldr, m, n, k, false)) return cudaErrorInvalidValue;
  if (n == 0) return cudaSuccess;
  const FusedParams p{a, lda, nullptr, 0.0f, w, ldw, residual, ldr, n, k};
  return Launch<false, Epilogue::kAddResidual>(p, m, cols_per_warp, stream);
}

}  // namespace hkv::kernels
