#include "kernels/cuda_common.cuh"
#include "kernels/gemm.h"
#include "kernels/gemv.cuh"
#include "kernels/gemv.h"

namespace hkv::kernels {
namespace {

using gemv_internal::DotRows;
using gemv_internal::kThreads;
using gemv_internal::kWarps;

template <typename T, int M, bool kFp32Out>
__global__ void __launch_bounds__(kThreads)
    GemvKernel(const T* __restrict__ a, int64_t lda, const T* __restrict__ w, int64_t ldw,
               void* __restrict__ c, int64_t ldc, int n, int k) {
  // DotRows waits for the previous kernel after its first weight loads (kWaitInside).
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int col = blockIdx.x * kWarps + warp;
  if (col >= n) return;
  const T* rows[1] = {w + static_cast<int64_t>(col) * ldw};
  float acc[1][M] = {};
  DotRows<T, M, 1, false, true>(a, lda, rows, k, lane, acc);
  AllowDependents();  // the weight stream is done; only the store remains
  if (lane == 0) {
#pragma unroll
    for (int m = 0; m < M; ++m) {
      if constexpr (kFp32Out) {
        static_cast<float*>(c)[m * ldc + col] = acc[0][m];
      } else {
        static_cast<T*>(c)[m * ldc + col] = FromFloat<T>(acc[0][m]);
      }
    }
  }
}

// out[m, j] = silu(a[m] . w[j]) * (a[m] . w[n + j]): the gate and up rows of a fused gate_up
// weight in one warp, so the SwiGLU needs no kernel and no [m, 2n] intermediate.
template <typename T, int M>
__global__ void __launch_bounds__(kThreads)
    GemvSwiGluKernel(const T* __restrict__ a, int64_t lda, const T* __restrict__ w, int64_t ldw,
                     T* __restrict__ out, int64_t ldo, int n, int k) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int col = blockIdx.x * kWarps + warp;
  if (col >= n) return;
  const T* rows[2] = {w + static_cast<int64_t>(col) * ldw, w + static_cast<int64_t>(n + col) * ldw};
  float acc[2][M] = {};
  DotRows<T, M, 2, false, true>(a, lda, rows, k, lane, acc);
  AllowDependents();
  if (lane == 0) {
#pragma unroll
    for (int m = 0; m < M; ++m) {
      // The unfused path rounds gate and up to T before the SwiGLU: do the same.
      const float g = ToFloat<T>(FromFloat<T>(acc[0][m]));
      const float u = ToFloat<T>(FromFloat<T>(acc[1][m]));
      out[m * ldo + col] = FromFloat<T>(g / (1.0f + __expf(-g)) * u);
    }
  }
}

template <typename T, bool kFp32Out>
cudaError_t LaunchGemv(const void* a, int64_t lda, const void* w, int64_t ldw, void* c, int64_t ldc,
                       int m, int n, int k, cudaStream_t stream) {
  const dim3 grid((n + kWarps - 1) / kWarps);
  const T* at = static_cast<const T*>(a);
  const T* wt = static_cast<const T*>(w);
  switch (m) {
#define HKV_GEMV_CASE(M)                                                                          \
  case M:                                                                                         \
    return LaunchOverlapped(GemvKernel<T, M, kFp32Out>, grid, dim3(kThreads), 0, stream, at, lda, \
                            wt, ldw, c, ldc, n, k);
    HKV_GEMV_CASE(1)
    HKV_GEMV_CASE(2)
    HKV_GEMV_CASE(3)
    HKV_GEMV_CASE(4)
    HKV_GEMV_CASE(5)
    HKV_GEMV_CASE(6)
    HKV_GEMV_CASE(7)
    HKV_GEMV_CASE(8)
#undef HKV_GEMV_CASE
    default:
      return cudaErrorInvalidValue;
  }
}

template <typename T>
cudaError_t LaunchGemvSwiGlu(const void* a, int64_t lda, const void* w, int64_t ldw, void* out,
                             int64_t ldo, int m, int n, int k, cudaStream_t stream) {
  const dim3 grid((n + kWarps - 1) / kWarps);
  const T* at = static_cast<const T*>(a);
  const T* wt = static_cast<const T*>(w);
  T* ot = static_cast<T*>(out);
  switch (m) {
#define HKV_GEMV_SWIGLU_CASE(M)                                                                   \
  case M:                                                                                         \
    return LaunchOverlapped(GemvSwiGluKernel<T, M>, grid, dim3(kThreads), 0, stream, at, lda, wt, \
                            ldw, ot, ldo, n, k);
    HKV_GEMV_SWIGLU_CASE(1)
    HKV_GEMV_SWIGLU_CASE(2)
    HKV_GEMV_SWIGLU_CASE(3)
    HKV_GEMV_SWIGLU_CASE(4)
#undef HKV_GEMV_SWIGLU_CASE
    default:
      return cudaErrorInvalidValue;
  }
}

bool GemvApplies(const void* a, int64_t lda, const void* w, int64_t ldw, int32_t m, int32_t k) {
  return m >= 1 && m <= kGemvMaxRows && k % 8 == 0 && lda % 8 == 0 && ldw % 8 == 0 &&
         reinterpret_cast<uintptr_t>(a) % 16 == 0 && reinterpret_cast<uintptr_t>(w) % 16 == 0;
}

}  // namespace

cudaError_t Gemv(DType dtype, const void* a, int64_t lda, const void* w, int64_t ldw, void* c,
                 int64_t ldc, bool c_fp32, int32_t m, int32_t n, int32_t k, cudaStream_t stream) {
  if (!GemvApplies(a, lda, w, ldw, m, k) || n < 0 || ldc < n || lda < k || ldw < k) {
    return cudaErrorInvalidValue;
  }
  if (n == 0) return cudaSuccess;
  return DispatchDType(dtype, [&](auto t) {
    using T = decltype(t);
    return c_fp32 ? LaunchGemv<T, true>(a, lda, w, ldw, c, ldc, m, n, k, stream)
                  : LaunchGemv<T, false>(a, lda, w, ldw, c, ldc, m, n, k, stream);
  });
}

cudaError_t GemvSwiGlu(DType dtype, const void* a, int64_t lda, const void* w_gate_up, int64_t ldw,
                       void* out, int64_t ldo, int32_t m, int32_t n, int32_t k,
                       cudaStream_t stream) {
  if (!GemvApplies(a, lda, w_gate_up, ldw, m, k) || m > kGemvPreferredRows || n < 0 || ldo < n ||
      lda < k || ldw < k) {
    return cudaErrorInvalidValue;
  }
  if (n == 0) return cudaSuccess;
  return DispatchDType(dtype, [&](auto t) {
    using T = decltype(t);
    return LaunchGemvSwiGlu<T>(a, lda, w_gate_up, ldw, out, ldo, m, n, k, stream);
  });
}

cublasStatus_t LinearRowMajor(cublasHandle_t handle, cudaStream_t stream, DType dtype,
                              const void* a, int64_t lda, const void* w, int64_t ldw, void* c,
                              int64_t ldc, bool c_fp32, int32_t m, int32_t n, int32_t k) {
  if (m <= kGemvPreferredRows && GemvApplies(a, lda, w, ldw, m, k) && ldc >= n && n >= 0) {
    return Gemv(dtype, a, lda, w, ldw, c, ldc, c_fp32, m, n, k, stream) == cudaSuccess
               ? CUBLAS_STATUS_SUCCESS
               : CUBLAS_STATUS_EXECUTION_FAILED;
  }
  return GemmRowMajor(handle, dtype, a, lda, w, ldw, c, ldc, c_fp32, m, n, k);
}

}  // namespace hkv::kernels
