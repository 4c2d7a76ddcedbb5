#pragma once
// Decode-step matrix products with their neighbours folded in, so a layer at 1..4 sequences is
// four weight streams and no separate norm or residual kernels:
//
//   RmsNormGemv        out = rmsnorm(x) * w^T           (input norm + q/k/v projection)
//   RmsNormGemvSwiGlu  out = swiglu(rmsnorm(x) * w^T)   (post-attention norm + gate_up + SwiGLU)
//   GemvAddResidual    residual += a * w^T              (o_proj, down_proj)
//
// The norm prologue: every CTA normalises the m input rows into shared memory (one k-element
// row per sequence, read from L2; the CTA's weight slab is 8-32x larger), then streams its
// weight rows as Gemv does. Rounding follows the unfused kernels exactly: the normalised row is
// rounded to the storage type as RmsNorm stores it, the product is rounded before the residual
// add as the separate o_proj output was, gate and up are rounded before the SwiGLU.
//
// `cols_per_warp` (1, 2 or 4) picks how many output columns one warp computes: more columns
// amortise the prologue and the per-warp reduction over more weight bytes, fewer give more
// CTAs (a 4096-column o_proj at 4 columns per warp is 128 CTAs, fewer than the H100/H200 SMs).
// bf16 only (the CUDA worker's dtype). Host-only declarations; kernels in gemv_fused.cu.
//
// Thread-safety: stateless; ordered by the stream.

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/dtype.h"

namespace hkv::kernels {

// Rows up to which the fused kernels run (= kGemvPreferredRows, where decode uses Gemv).
inline constexpr int32_t kFusedGemvMaxRows = 4;

// Whether the fused kernels take these shapes: bf16, 1 <= m <= kFusedGemvMaxRows, k % 8 == 0,
// and (norm prologue) m rows of k elements fit the 48 KB of shared memory.
bool FusedGemvApplies(DType dtype, int32_t m, int32_t k, bool norm_prologue);

// out[m, j] = sum_t round(x[m, t] * inv_rms(x[m]) * norm_w[t]) * w[j, t] for j < n, rounded.
//   x: device [m, k] at row stride ldx; norm_w: device [k]; w: device [n, k] at ldw;
//   out: device [m, n] at ldo. x, w 16-byte aligned; ldx, ldw multiples of 8.
// Grid: (ceil(n / (8 * cols_per_warp))) Block: (256) Smem: m * k * 2 bytes.
cudaError_t RmsNormGemv(DType dtype, const void* x, int64_t ldx, const void* norm_w, float eps,
                        const void* w, int64_t ldw, void* out, int64_t ldo, int32_t m, int32_t n,
                        int32_t k, int32_t cols_per_warp, cudaStream_t stream);

// out[m, j] = silu(g) * u with g, u = rmsnorm(x[m]) . w[j], . w[n + j] (rounded), j < n:
// the fused [2n, k] gate_up weight (gate rows, then up rows), as GemvSwiGlu.
// Grid: (ceil(n / (8 * cols_per_warp))) Block: (256) Smem: m * k * 2 bytes.
cudaError_t RmsNormGemvSwiGlu(DType dtype, const void* x, int64_t ldx, const void* norm_w,
                              float eps, const void* w_gate_up, int64_t ldw, void* out, int64_t ldo,
                              int32_t m, int32_t n, int32_t k, int32_t cols_per_warp,
                              cudaStream_t stream);

// residual[m, j] = round(residual[m, j] + round(a[m] . w[j])) for j < n.
//   a: device [m, k] at lda; w: device [n, k] at ldw; residual: device [m, n] at ldr.
// Grid: (ceil(n / (8 * cols_per_warp))) Block: (256).
cudaError_t GemvAddResidual(DType dtype, const void* a, int64_t lda, const void* w, int64_t ldw,
                            void* residual, int64_t ldr, int32_t m, int32_t n, int32_t k,
                            int32_t cols_per_warp, cudaStream_t stream);

}  // namespace hkv::kernels
