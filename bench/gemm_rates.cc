#include "bench/gemm_rates.h"

#include <vector>

#include "bench/cuda_bench_util.h"
#include "kernels/dtype.h"
#include "kernels/gemv.h"

namespace hkv::bench {

using kernels::DType;
using kernels::LinearRowMajor;
constexpr DType kDt = DType::kBf16;

double GemmPeakTflops(cublasHandle_t h, cudaStream_t stream) {
  constexpr int32_t n = 8192;
  void* a = Random(static_cast<size_t>(n) * n, 1);
  void* w = Random(static_cast<size_t>(n) * n, 2);
  void* c = nullptr;
  CHECK_CUDA(cudaMalloc(&c, static_cast<size_t>(n) * n * 2));
  const double ms = MedianMs(stream, 3, 10, [&] {
    CHECK_CUBLAS(LinearRowMajor(h, stream, kDt, a, n, w, n, c, n, false, n, n, n));
    return true;
  });
  CHECK_CUDA(cudaFree(a));
  CHECK_CUDA(cudaFree(w));
  CHECK_CUDA(cudaFree(c));
  return 2.0 * n * n * static_cast<double>(n) / ms / 1e9;
}

double LtBestTflops(cublasLtHandle_t lt, cublasHandle_t cublas, cudaStream_t stream, int32_t m,
                    int32_t n, int32_t k, double* alone) {
  void* a = Random(static_cast<size_t>(m) * k, 21);
  void* w = Random(static_cast<size_t>(n) * k, 22);
  void *c, *ws;
  size_t ws_bytes = 64 << 20;
  CHECK_CUDA(cudaMalloc(&c, static_cast<size_t>(m) * n * 2));
  CHECK_CUDA(cudaMalloc(&ws, ws_bytes));
  cublasLtMatmulDesc_t op;
  CHECK_CUBLAS(cublasLtMatmulDescCreate(&op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  const cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
  CHECK_CUBLAS(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta)));
  CHECK_CUBLAS(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb)));
  // Column-major view: C^T [n, m] = (W^T)^T [n, k] x A^T [k, m].
  cublasLtMatrixLayout_t la, lb, lc;
  CHECK_CUBLAS(cublasLtMatrixLayoutCreate(&la, CUDA_R_16BF, k, n, k));
  CHECK_CUBLAS(cublasLtMatrixLayoutCreate(&lb, CUDA_R_16BF, k, m, k));
  CHECK_CUBLAS(cublasLtMatrixLayoutCreate(&lc, CUDA_R_16BF, n, m, n));
  cublasLtMatmulPreference_t pref;
  CHECK_CUBLAS(cublasLtMatmulPreferenceCreate(&pref));
  CHECK_CUBLAS(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                    &ws_bytes, sizeof(ws_bytes)));
  cublasLtMatmulHeuristicResult_t res[8];
  int found = 0;
  CHECK_CUBLAS(cublasLtMatmulAlgoGetHeuristic(lt, op, la, lb, lc, lc, pref, 8, res, &found));
  const float alpha = 1.0f, beta = 0.0f;
  const double flop = 2.0 * m * static_cast<double>(n) * k;
  *alone = flop /
           MedianMs(stream, 1, 5,
                    [&] {
                      CHECK_CUBLAS(
                          LinearRowMajor(cublas, stream, kDt, a, k, w, k, c, n, false, m, n, k));
                      return true;
                    }) /
           1e9;
  double best_ms = 1e30;
  for (int i = 0; i < found; ++i) {
    const double ms = MedianMs(stream, 1, 5, [&] {
      return cublasLtMatmul(lt, op, &alpha, w, la, a, lb, &beta, c, lc, c, lc, &res[i].algo, ws,
                            ws_bytes, stream) == CUBLAS_STATUS_SUCCESS;
    });
    if (ms > 0) best_ms = std::min(best_ms, ms);
  }
  cublasLtMatmulPreferenceDestroy(pref);
  cublasLtMatrixLayoutDestroy(la);
  cublasLtMatrixLayoutDestroy(lb);
  cublasLtMatrixLayoutDestroy(lc);
  cublasLtMatmulDescDestroy(op);
  for (void* p : {a, w, c, ws}) CHECK_CUDA(cudaFree(p));
  return flop / best_ms / 1e9;
}

}  // namespace hkv::bench
