#include "kernels/gemm.h"

namespace hkv::kernels {

cublasStatus_t GemmRowMajor(cublasHandle_t handle, DType dtype, const void* a, int64_t lda,
                            const void* w, int64_t ldw, void* c, int64_t ldc, bool c_fp32,
                            int32_t m, int32_t n, int32_t k, float beta) {
  if (m < 0 || n < 0 || k < 0 || lda < k || ldw < k || ldc < n) {
    return CUBLAS_STATUS_INVALID_VALUE;
  }
  if (m == 0 || n == 0) return CUBLAS_STATUS_SUCCESS;
  const cudaDataType_t t = dtype == DType::kBf16 ? CUDA_R_16BF : CUDA_R_16F;
  const float alpha = 1.0f;
  // Column-major view: C^T [n, m] = W [n, k] (stored as k x n col-major, transposed) * A^T.
  return cublasGemmEx(handle, CUBLAS_OP_T, CUBLAS_OP_N, n, m, k, &alpha, w, t,
                      static_cast<int>(ldw), a, t, static_cast<int>(lda), &beta, c,
                      c_fp32 ? CUDA_R_32F : t, static_cast<int>(ldc), CUBLAS_COMPUTE_32F,
                      CUBLAS_GEMM_DEFAULT);
}

}  // namespace hkv::kernels
