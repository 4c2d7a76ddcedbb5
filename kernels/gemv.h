#pragma once
// Skinny matrix products for decode: c[m, n] = a[m, k] * w[n, k]^T for m <= kGemvMaxRows,
// row-major, fp32 accumulation. At one to a few sequences a decode step is a stream of weight
// reads; cuBLAS's GEMM kernels reach about 60 % of HBM bandwidth on these shapes, this kernel
// reads each weight row once with 16-byte loads, many in flight per lane, and reduces in
// registers. LinearRowMajor picks it for small m and cuBLAS otherwise.
// Host-only declarations; kernel in gemv.cu.
//
// Thread-safety: stateless (the cuBLAS handle follows cuBLAS's rule: one thread at a time).

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/dtype.h"

namespace hkv::kernels {

inline constexpr int32_t kGemvMaxRows = 8;

// REQUIRES 1 <= m <= kGemvMaxRows, k % 8 == 0, lda and ldw multiples of 8, 16-byte aligned a
// and w. c in `dtype`, or fp32 when `c_fp32`. cudaErrorInvalidValue otherwise.
// Grid: (ceil(n / 8)) Block: (256): one warp per output column n.
// With programmatic dependent launch (kernels/cuda_common.cuh) each warp issues its first
// weight loads before it waits for the previous kernel, so `w` (and GemvSwiGlu's w_gate_up)
// must not be written by kernels still running on the stream: model weights. `a` may be.
cudaError_t Gemv(DType dtype, const void* a, int64_t lda, const void* w, int64_t ldw, void* c,
                 int64_t ldc, bool c_fp32, int32_t m, int32_t n, int32_t k, cudaStream_t stream);

// out[m, j] = silu(a[m] . w[j]) * (a[m] . w[n + j]) for j < n: the MLP's gate_up projection and
// SwiGLU in one pass over the fused [2n, k] weight (gate rows, then up rows), as decode uses it.
// Gate and up are rounded to `dtype` before the SwiGLU, as the unfused path stores them.
// REQUIRES Gemv's conditions and m <= kGemvPreferredRows; cudaErrorInvalidValue otherwise.
cudaError_t GemvSwiGlu(DType dtype, const void* a, int64_t lda, const void* w_gate_up, int64_t ldw,
                       void* out, int64_t ldo, int32_t m, int32_t n, int32_t k,
                       cudaStream_t stream);

// Rows up to which LinearRowMajor prefers Gemv (measured on H100: equal to cuBLAS at 4 rows,
// slower at 8; bench/README.md).
inline constexpr int32_t kGemvPreferredRows = 4;

// GemmRowMajor's contract (kernels/gemm.h, beta 0): Gemv when its requirements hold and
// m <= kGemvPreferredRows, else cuBLAS. Returns CUBLAS_STATUS_EXECUTION_FAILED if the Gemv launch
// fails.
cublasStatus_t LinearRowMajor(cublasHandle_t handle, cudaStream_t stream, DType dtype,
                              const void* a, int64_t lda, const void* w, int64_t ldw, void* c,
                              int64_t ldc, bool c_fp32, int32_t m, int32_t n, int32_t k);

}  // namespace hkv::kernels
