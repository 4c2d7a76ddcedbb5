#pragma once
// GEMM through cuBLAS for row-major activations times nn.Linear-style weights.
// Host-only; plain C++ (gemm.cc).
//
// Thread-safety: a cublasHandle_t must not be used by two threads at once (cuBLAS rule).

#include <cublas_v2.h>

#include <cstdint>

#include "kernels/dtype.h"

namespace hkv::kernels {

// c[m, n] = a[m, k] * w[n, k]^T (+ beta * c), all row-major, fp32 accumulation.
// a, w in `dtype`; c in `dtype`, or fp32 when `c_fp32` (e.g. logits for sampling).
// Leading dimensions: lda (>= k), ldw (>= k), ldc (>= n) in elements.
cublasStatus_t GemmRowMajor(cublasHandle_t handle, DType dtype, const void* a, int64_t lda,
                            const void* w, int64_t ldw, void* c, int64_t ldc, bool c_fp32,
                            int32_t m, int32_t n, int32_t k, float beta = 0.0f);

}  // namespace hkv::kernels
