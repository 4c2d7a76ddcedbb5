// The fused decode products against the CPU references composed as the unfused kernels run
// them (ref::RmsNorm, rounded to bf16, then ref::MatmulRowMajor; ref::SwiGlu of the rounded
// gate and up; the rounded product added to the residual), for every row count, every
// columns-per-warp variant, widths that do not fill the last CTA, strided inputs, products
// chained after the kernel that writes their input (their first weight loads go out before
// they wait on it), and the refusals. Skips without a GPU.

#include "kernels/gemv_fused.h"

#include <cmath>
#include <random>
#include <vector>

#include "kernels/layer_ops.h"
#include "kernels/test_util.h"

namespace hkv::kernels {
namespace {

using testing::DeviceArray;
constexpr DType kBf16 = DType::kBf16;
constexpr float kEps = 1e-5f;

std::vector<float> Round(std::vector<float> v) {
  return testing::FromStorage(testing::ToStorage(v, kBf16), kBf16);
}

DeviceArray<uint16_t> Dev(const std::vector<float>& f) {
  DeviceArray<uint16_t> d(f.size());
  EXPECT_EQ(d.Upload(testing::ToStorage(f, kBf16)), cudaSuccess);
  return d;
}

std::vector<float> Host(const DeviceArray<uint16_t>& d) {
  return testing::FromStorage(d.Download(), kBf16);
}

// rmsnorm(x) rounded to bf16, as RmsNorm stores it: x [m, ldx] -> [m, k].
std::vector<float> NormRows(const std::vector<float>& x, int64_t ldx, const std::vector<float>& w,
                            int32_t m, int32_t k) {
  std::vector<float> dense(static_cast<size_t>(m) * k), out(dense.size());
  for (int32_t i = 0; i < m; ++i) {
    for (int32_t t = 0; t < k; ++t) dense[i * k + t] = x[i * ldx + t];
  }
  ref::RmsNorm(dense.data(), nullptr, w.data(), m, k, kEps, out.data());
  return Round(out);
}

struct Shape {
  int32_t m, n, k;
  int64_t ldx;
};

void CheckNormGemv(const Shape& s, int32_t cols, std::mt19937& rng) {
  const auto x = testing::RandomValues(s.m * s.ldx, 2.0f, kBf16, rng);
  const auto nw = testing::RandomValues(s.k, 1.0f, kBf16, rng);
  const auto w = testing::RandomValues(static_cast<size_t>(s.n) * s.k, 0.1f, kBf16, rng);
  const auto xn = NormRows(x, s.ldx, nw, s.m, s.k);
  std::vector<float> want(static_cast<size_t>(s.m) * s.n);
  ref::MatmulRowMajor(xn.data(), w.data(), want.data(), s.m, s.n, s.k);
  auto dx = Dev(x), dnw = Dev(nw), dw = Dev(w);
  DeviceArray<uint16_t> out(want.size());
  HKV_CUDA_OK(RmsNormGemv(kBf16, dx.get(), s.ldx, dnw.get(), kEps, dw.get(), s.k, out.get(), s.n,
                          s.m, s.n, s.k, cols, nullptr));
  HKV_CUDA_OK(cudaDeviceSynchronize());
  EXPECT_LT(testing::RelError(Host(out), want), testing::Tolerance(kBf16))
      << "m=" << s.m << " n=" << s.n << " k=" << s.k << " cols=" << cols;
}

void CheckNormSwiGlu(const Shape& s, int32_t cols, std::mt19937& rng) {
  const auto x = testing::RandomValues(s.m * s.ldx, 2.0f, kBf16, rng);
  const auto nw = testing::RandomValues(s.k, 1.0f, kBf16, rng);
  const auto w = testing::RandomValues(2 * static_cast<size_t>(s.n) * s.k, 0.1f, kBf16, rng);
  const auto xn = NormRows(x, s.ldx, nw, s.m, s.k);
  std::vector<float> gu(2 * static_cast<size_t>(s.m) * s.n);
  ref::MatmulRowMajor(xn.data(), w.data(), gu.data(), s.m, 2 * s.n, s.k);
  gu = Round(gu);
  std::vector<float> want(static_cast<size_t>(s.m) * s.n);
  for (int32_t i = 0; i < s.m; ++i) {
    ref::SwiGlu(&gu[i * 2 * s.n], &gu[i * 2 * s.n + s.n], s.n, &want[i * s.n]);
  }
  auto dx = Dev(x), dnw = Dev(nw), dw = Dev(w);
  DeviceArray<uint16_t> out(want.size());
  HKV_CUDA_OK(RmsNormGemvSwiGlu(kBf16, dx.get(), s.ldx, dnw.get(), kEps, dw.get(), s.k, out.get(),
                                s.n, s.m, s.n, s.k, cols, nullptr));
  HKV_CUDA_OK(cudaDeviceSynchronize());
  EXPECT_LT(testing::RelError(Host(out), want), testing::Tolerance(kBf16))
      << "m=" << s.m << " n=" << s.n << " k=" << s.k << " cols=" << cols;
}

void CheckAddResidual(const Shape& s, int32_t cols, std::mt19937& rng) {
  const auto a = testing::RandomValues(s.m * s.ldx, 1.0f, kBf16, rng);
  const auto w = testing::RandomValues(static_cast<size_t>(s.n) * s.k, 0.1f, kBf16, rng);
  const auto res = testing::RandomValues(static_cast<size_t>(s.m) * s.n, 4.0f, kBf16, rng);
  std::vector<float> dense(static_cast<size_t>(s.m) * s.k), prod(res.size());
  for (int32_t i = 0; i < s.m; ++i) {
    for (int32_t t = 0; t < s.k; ++t) dense[i * s.k + t] = a[i * s.ldx + t];
  }
  ref::MatmulRowMajor(dense.data(), w.data(), prod.data(), s.m, s.n, s.k);
  prod = Round(prod);
  std::vector<float> want(res.size());
  for (size_t i = 0; i < want.size(); ++i) want[i] = res[i] + prod[i];
  want = Round(want);
  auto da = Dev(a), dw = Dev(w), dres = Dev(res);
  HKV_CUDA_OK(GemvAddResidual(kBf16, da.get(), s.ldx, dw.get(), s.k, dres.get(), s.n, s.m, s.n, s.k,
                              cols, nullptr));
  HKV_CUDA_OK(cudaDeviceSynchronize());
  // The sum's own rounding dominates: compare the change against the product.
  const auto got = Host(dres);
  std::vector<float> got_delta(got.size()), want_delta(got.size());
  for (size_t i = 0; i < got.size(); ++i) {
    got_delta[i] = got[i] - res[i];
    want_delta[i] = want[i] - res[i];
  }
  EXPECT_LT(testing::RelError(got_delta, want_delta), 2 * testing::Tolerance(kBf16))
      << "m=" << s.m << " n=" << s.n << " k=" << s.k << " cols=" << cols;
}

TEST(GemvFusedTest, EveryRowCountAndVariant) {
  HKV_REQUIRE_GPU();
  std::mt19937 rng(11);
  for (int32_t m = 1; m <= kFusedGemvMaxRows; ++m) {
    for (int32_t cols : {1, 2, 4}) {
      CheckNormGemv({m, 100, 1024, 1024}, cols, rng);   // 100: the last CTA part-filled
      CheckNormSwiGlu({m, 72, 1000, 1008}, cols, rng);  // k not a multiple of 256, strided
      CheckAddResidual({m, 100, 1000, 1008}, cols, rng);
    }
  }
}

TEST(GemvFusedTest, LlamaShapes) {
  HKV_REQUIRE_GPU();
  std::mt19937 rng(12);
  CheckNormGemv({4, 6144, 4096, 4096}, 2, rng);       // qkv, 32 KB of normalised rows
  CheckNormSwiGlu({1, 14336, 4096, 4096}, 2, rng);    // gate_up
  CheckAddResidual({2, 4096, 4096, 4096}, 1, rng);    // o_proj
  CheckAddResidual({1, 4096, 14336, 14336}, 4, rng);  // down_proj
}

TEST(GemvFusedTest, ReadsItsInputOnlyAfterThePreviousKernelWroteIt) {
  // On one stream, 24 times: RmsNorm writes a new row into the same buffer, then a fused
  // product (the three in turn) reads it. One that read its input, or normalised it, before
  // the norm finished would use the previous row.
  HKV_REQUIRE_GPU();
  const int32_t k = 4096, n = 2048, iters = 24;
  std::mt19937 rng(13);
  const auto x = testing::RandomValues(static_cast<size_t>(iters) * k, 2.0f, kBf16, rng);
  const auto nw = testing::RandomValues(k, 1.0f, kBf16, rng);
  const auto w = testing::RandomValues(2 * static_cast<size_t>(n) * k, 0.05f, kBf16, rng);
  auto dx = Dev(x), dnw = Dev(nw), dw = Dev(w);
  DeviceArray<uint16_t> row(k), out(static_cast<size_t>(iters) * n);
  HKV_CUDA_OK(out.Fill(0));  // the residual of the GemvAddResidual rows starts at zero
  HKV_CUDA_OK(cudaDeviceSynchronize());
  cudaStream_t stream;
  HKV_CUDA_OK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  for (int32_t i = 0; i < iters; ++i) {
    uint16_t* o = out.get() + static_cast<size_t>(i) * n;
    HKV_CUDA_OK(RmsNorm(kBf16, dx.get() + static_cast<size_t>(i) * k, nullptr, dnw.get(), row.get(),
                        1, k, kEps, stream));
    if (i % 3 == 0) {
      HKV_CUDA_OK(
          RmsNormGemv(kBf16, row.get(), k, dnw.get(), kEps, dw.get(), k, o, n, 1, n, k, 1, stream));
    } else if (i % 3 == 1) {
      HKV_CUDA_OK(RmsNormGemvSwiGlu(kBf16, row.get(), k, dnw.get(), kEps, dw.get(), k, o, n, 1, n,
                                    k, 2, stream));
    } else {
      HKV_CUDA_OK(GemvAddResidual(kBf16, row.get(), k, dw.get(), k, o, n, 1, n, k, 1, stream));
    }
  }
  HKV_CUDA_OK(cudaStreamSynchronize(stream));
  HKV_CUDA_OK(cudaStreamDestroy(stream));
  const std::vector<float> got = Host(out);
  for (int32_t i = 0; i < iters; ++i) {
    const std::vector<float> xi(x.begin() + static_cast<size_t>(i) * k,
                                x.begin() + static_cast<size_t>(i + 1) * k);
    const std::vector<float> r = NormRows(xi, k, nw, 1, k);  // what RmsNorm stored
    std::vector<float> want(n);
    if (i % 3 == 1) {
      std::vector<float> gu(2 * static_cast<size_t>(n));
      ref::MatmulRowMajor(NormRows(r, k, nw, 1, k).data(), w.data(), gu.data(), 1, 2 * n, k);
      gu = Round(gu);
      ref::SwiGlu(gu.data(), gu.data() + n, n, want.data());
    } else {
      ref::MatmulRowMajor(i % 3 == 0 ? NormRows(r, k, nw, 1, k).data() : r.data(), w.data(),
                          want.data(), 1, n, k);
    }
    const std::vector<float> g(got.begin() + static_cast<size_t>(i) * n,
                               got.begin() + static_cast<size_t>(i + 1) * n);
    EXPECT_LT(testing::RelError(g, want), 2 * testing::Tolerance(kBf16))
        << "row " << i
        << (i % 3 == 0   ? " RmsNormGemv"
            : i % 3 == 1 ? " RmsNormGemvSwiGlu"
                         : " GemvAddResidual");
  }
}

TEST(GemvFusedTest, RefusesWhatItDoesNotServe) {
  HKV_REQUIRE_GPU();
  DeviceArray<uint16_t> buf(8 * 8192);
  void* p = buf.get();
  EXPECT_FALSE(FusedGemvApplies(DType::kFp16, 1, 1024, true));
  EXPECT_FALSE(FusedGemvApplies(kBf16, 5, 1024, false));
  EXPECT_FALSE(FusedGemvApplies(kBf16, 4, 8192, true));  // 64 KB of rows
  EXPECT_TRUE(FusedGemvApplies(kBf16, 4, 8192, false));
  EXPECT_EQ(RmsNormGemv(kBf16, p, 64, p, kEps, p, 64, p, 8, 1, 8, 64, 3, nullptr),
            cudaErrorInvalidValue);  // 3 columns per warp
  EXPECT_EQ(GemvAddResidual(kBf16, p, 60, p, 60, p, 8, 1, 8, 60, 1, nullptr),
            cudaErrorInvalidValue);  // k % 8 != 0
  EXPECT_EQ(RmsNormGemvSwiGlu(DType::kFp16, p, 64, p, kEps, p, 64, p, 8, 1, 8, 64, 1, nullptr),
            cudaErrorInvalidValue);
}

}  // namespace
}  // namespace hkv::kernels
