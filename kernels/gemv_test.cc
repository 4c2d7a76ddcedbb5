// Gemv and LinearRowMajor against ref::MatmulRowMajor: every row count 1..8, widths that are and
// are not multiples of the unrolled step, fp32 and dtype outputs, strided inputs, and the cuBLAS
// fallback (more rows, unaligned k); and, as a decode step chains them, products whose input the
// kernel just before them writes (they start their weight loads before that kernel ends).
// Skips without a GPU.

#include "kernels/gemv.h"

#include <random>
#include <vector>

#include "kernels/layer_ops.h"
#include "kernels/test_util.h"

namespace hkv::kernels {
namespace {

using testing::DeviceArray;

struct Case {
  int32_t m, n, k;
  int64_t lda;  // >= k
};

void Check(DType dtype, const Case& cs, bool fp32_out, bool through_linear) {
  std::mt19937 rng(cs.m * 131 + cs.n * 7 + cs.k);
  const std::vector<float> a = testing::RandomValues(cs.m * cs.lda, 1.0f, dtype, rng);
  const std::vector<float> w =
      testing::RandomValues(static_cast<size_t>(cs.n) * cs.k, 0.1f, dtype, rng);
  std::vector<float> a_dense(static_cast<size_t>(cs.m) * cs.k);
  for (int32_t i = 0; i < cs.m; ++i) {
    for (int32_t t = 0; t < cs.k; ++t) a_dense[i * cs.k + t] = a[i * cs.lda + t];
  }
  std::vector<float> want(static_cast<size_t>(cs.m) * cs.n);
  ref::MatmulRowMajor(a_dense.data(), w.data(), want.data(), cs.m, cs.n, cs.k);
  DeviceArray<uint16_t> da(a.size()), dw(w.size());
  DeviceArray<float> dc32(want.size());
  DeviceArray<uint16_t> dc16(want.size());
  HKV_CUDA_OK(da.Upload(testing::ToStorage(a, dtype)));
  HKV_CUDA_OK(dw.Upload(testing::ToStorage(w, dtype)));
  void* c = fp32_out ? static_cast<void*>(dc32.get()) : static_cast<void*>(dc16.get());
  if (through_linear) {
    cublasHandle_t h;
    ASSERT_EQ(cublasCreate(&h), CUBLAS_STATUS_SUCCESS);
    EXPECT_EQ(LinearRowMajor(h, nullptr, dtype, da.get(), cs.lda, dw.get(), cs.k, c, cs.n, fp32_out,
                             cs.m, cs.n, cs.k),
              CUBLAS_STATUS_SUCCESS);
    HKV_CUDA_OK(cudaDeviceSynchronize());
    cublasDestroy(h);
  } else {
    HKV_CUDA_OK(Gemv(dtype, da.get(), cs.lda, dw.get(), cs.k, c, cs.n, fp32_out, cs.m, cs.n, cs.k,
                     nullptr));
    HKV_CUDA_OK(cudaDeviceSynchronize());
  }
  const std::vector<float> got =
      fp32_out ? dc32.Download() : testing::FromStorage(dc16.Download(), dtype);
  EXPECT_LT(testing::RelError(got, want), fp32_out ? 1e-4 : testing::Tolerance(dtype))
      << testing::Name(dtype) << " m=" << cs.m << " n=" << cs.n << " k=" << cs.k;
}

TEST(GemvTest, MatchesTheReferenceForEveryRowCount) {
  HKV_REQUIRE_GPU();
  for (DType dtype : {DType::kBf16, DType::kFp16}) {
    for (int32_t m = 1; m <= kGemvMaxRows; ++m) {
      Check(dtype, {m, 37, 1024, 1024}, /*fp32_out=*/false, false);
      Check(dtype, {m, 64, 1000, 1008}, /*fp32_out=*/true, false);  // k not a multiple of 256
    }
  }
}

TEST(GemvTest, LargeShapesAndStridedInput) {
  HKV_REQUIRE_GPU();
  Check(DType::kBf16, {1, 6144, 4096, 4096}, false, false);      // Llama-3-8B qkv
  Check(DType::kBf16, {4, 4096, 14336, 14336}, false, false);    // down_proj
  Check(DType::kBf16, {2, 1000, 4096, 4096 + 64}, true, false);  // lm_head-like, strided rows
}

TEST(GemvTest, LinearFallsBackToCublasOutsideTheSkinnyCase) {
  HKV_REQUIRE_GPU();
  Check(DType::kBf16, {3, 200, 512, 512}, false, true);   // Gemv
  Check(DType::kBf16, {7, 200, 512, 512}, false, true);   // cuBLAS: more than preferred
  Check(DType::kBf16, {24, 200, 512, 512}, false, true);  // cuBLAS: many rows
  Check(DType::kBf16, {2, 100, 100, 100}, true, true);    // cuBLAS: k % 8 != 0
}

TEST(GemvTest, SwiGluFusedMatchesTheTwoStepReference) {
  HKV_REQUIRE_GPU();
  for (int32_t m = 1; m <= kGemvPreferredRows; ++m) {
    const int32_t n = 300, k = 1024;
    std::mt19937 rng(m);
    const DType dtype = DType::kBf16;
    const std::vector<float> a = testing::RandomValues(m * k, 1.0f, dtype, rng);
    const std::vector<float> w = testing::RandomValues(2 * n * k, 0.05f, dtype, rng);
    std::vector<float> gu(static_cast<size_t>(m) * 2 * n), want(static_cast<size_t>(m) * n);
    ref::MatmulRowMajor(a.data(), w.data(), gu.data(), m, 2 * n, k);
    const std::vector<float> rounded =
        testing::FromStorage(testing::ToStorage(gu, dtype), dtype);  // as stored unfused
    for (int32_t i = 0; i < m; ++i) {
      ref::SwiGlu(rounded.data() + i * 2 * n, rounded.data() + i * 2 * n + n, n,
                  want.data() + i * n);
    }
    DeviceArray<uint16_t> da(a.size()), dw(w.size()), dout(want.size());
    HKV_CUDA_OK(da.Upload(testing::ToStorage(a, dtype)));
    HKV_CUDA_OK(dw.Upload(testing::ToStorage(w, dtype)));
    HKV_CUDA_OK(GemvSwiGlu(dtype, da.get(), k, dw.get(), k, dout.get(), n, m, n, k, nullptr));
    HKV_CUDA_OK(cudaDeviceSynchronize());
    EXPECT_LT(testing::RelError(testing::FromStorage(dout.Download(), dtype), want), 1e-2)
        << "m=" << m;
  }
  DeviceArray<uint16_t> x(64), w(64), o(64);
  EXPECT_EQ(GemvSwiGlu(DType::kBf16, x.get(), 8, w.get(), 8, o.get(), 4, kGemvPreferredRows + 1, 4,
                       8, nullptr),
            cudaErrorInvalidValue);
}

TEST(GemvTest, ReadsItsInputOnlyAfterThePreviousKernelWroteIt) {
  // A decode layer's order on one stream: RmsNorm writes the row, then Gemv (or GemvSwiGlu)
  // reads it, 24 times with a new row each time into the same buffer. A product that read its
  // input before the norm finished would use the previous row (its weights it may load early).
  HKV_REQUIRE_GPU();
  const DType dtype = DType::kBf16;
  const int32_t k = 4096, n = 2048, iters = 24;
  std::mt19937 rng(7);
  const std::vector<float> x =
      testing::RandomValues(static_cast<size_t>(iters) * k, 1.0f, dtype, rng);
  const std::vector<float> w =
      testing::RandomValues(static_cast<size_t>(2) * n * k, 0.05f, dtype, rng);
  const std::vector<float> norm_w = testing::RandomValues(k, 1.0f, dtype, rng);
  DeviceArray<uint16_t> dx(x.size()), dw(w.size()), dnorm(k), dxb(k);
  DeviceArray<uint16_t> dc(static_cast<size_t>(iters) * n), dsw(static_cast<size_t>(iters) * n);
  HKV_CUDA_OK(dx.Upload(testing::ToStorage(x, dtype)));
  HKV_CUDA_OK(dw.Upload(testing::ToStorage(w, dtype)));
  HKV_CUDA_OK(dnorm.Upload(testing::ToStorage(norm_w, dtype)));
  cudaStream_t stream;
  HKV_CUDA_OK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  for (int32_t i = 0; i < iters; ++i) {
    HKV_CUDA_OK(RmsNorm(dtype, dx.get() + static_cast<size_t>(i) * k, nullptr, dnorm.get(),
                        dxb.get(), 1, k, 1e-5f, stream));
    if (i % 2 == 0) {
      HKV_CUDA_OK(Gemv(dtype, dxb.get(), k, dw.get(), k, dc.get() + static_cast<size_t>(i) * n, n,
                       false, 1, n, k, stream));
    } else {
      HKV_CUDA_OK(GemvSwiGlu(dtype, dxb.get(), k, dw.get(), k,
                             dsw.get() + static_cast<size_t>(i) * n, n, 1, n, k, stream));
    }
  }
  HKV_CUDA_OK(cudaStreamSynchronize(stream));
  HKV_CUDA_OK(cudaStreamDestroy(stream));
  const std::vector<float> got = testing::FromStorage(dc.Download(), dtype);
  const std::vector<float> got_sw = testing::FromStorage(dsw.Download(), dtype);
  for (int32_t i = 0; i < iters; ++i) {
    std::vector<float> xb(k), out(2 * n), want(n);
    ref::RmsNorm(x.data() + static_cast<size_t>(i) * k, nullptr, norm_w.data(), 1, k, 1e-5f,
                 xb.data());
    xb = testing::FromStorage(testing::ToStorage(xb, dtype), dtype);  // stored in bf16
    if (i % 2 == 0) {
      ref::MatmulRowMajor(xb.data(), w.data(), want.data(), 1, n, k);
      const std::vector<float> row(got.begin() + static_cast<size_t>(i) * n,
                                   got.begin() + static_cast<size_t>(i + 1) * n);
      EXPECT_LT(testing::RelError(row, want), testing::Tolerance(dtype)) << "gemv, row " << i;
    } else {
      ref::MatmulRowMajor(xb.data(), w.data(), out.data(), 1, 2 * n, k);
      out = testing::FromStorage(testing::ToStorage(out, dtype), dtype);
      ref::SwiGlu(out.data(), out.data() + n, n, want.data());
      const std::vector<float> row(got_sw.begin() + static_cast<size_t>(i) * n,
                                   got_sw.begin() + static_cast<size_t>(i + 1) * n);
      EXPECT_LT(testing::RelError(row, want), 2e-2) << "swiglu, row " << i;
    }
  }
}

TEST(GemvTest, RejectsWhatItCannotRun) {
  HKV_REQUIRE_GPU();
  DeviceArray<uint16_t> a(64), w(64), c(64);
  EXPECT_EQ(Gemv(DType::kBf16, a.get(), 8, w.get(), 8, c.get(), 8, false, 9, 8, 8, nullptr),
            cudaErrorInvalidValue);  // too many rows
  EXPECT_EQ(Gemv(DType::kBf16, a.get(), 6, w.get(), 6, c.get(), 8, false, 1, 8, 6, nullptr),
            cudaErrorInvalidValue);  // k % 8 != 0
}

}  // namespace
}  // namespace hkv::kernels
