#pragma once
// The dense bf16 GEMM rates a prefill's GEMMs are measured against (prefill_phase_bench): the
// 8192^3 peak of the worker's call, and for one shape the worker's call alone and the best of
// cuBLASLt's heuristic algorithms. Bench code only (exits on errors).

#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace hkv::bench {

// TFLOP/s of an 8192^3 GEMM through kernels::LinearRowMajor (median of 10).
double GemmPeakTflops(cublasHandle_t h, cudaStream_t stream);

// The best cuBLASLt algorithm (of the heuristic's first 8) for c[m, n] = a[m, k] w[n, k]^T,
// row-major bf16, fp32 accumulation (the worker's GEMM, which goes through cublasGemmEx):
// TFLOP/s of the fastest, median of 5 calls each. Shows what a tuned algorithm choice would
// gain over the default one. `*alone` gets the worker's call (LinearRowMajor, cuBLAS's default
// algorithm) timed the same way on the same buffers: both away from the prefill's other kernels.
double LtBestTflops(cublasLtHandle_t lt, cublasHandle_t cublas, cudaStream_t stream, int32_t m,
                    int32_t n, int32_t k, double* alone);

}  // namespace hkv::bench
