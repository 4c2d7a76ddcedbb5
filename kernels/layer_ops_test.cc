// RMSNorm (+ fused residual), RoPE (both pairings), SwiGLU, embedding lookup, K/V append and
// the cuBLAS GEMM wrapper vs the CPU references.

#include "kernels/layer_ops.h"

#include <cublas_v2.h>
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "kernels/gemm.h"
#include "kernels/kv_append.h"
#include "kernels/reference.h"
#include "kernels/test_util.h"

namespace hkv::kernels {
namespace {

using testing::DeviceArray;

class LayerOpsTest : public ::testing::TestWithParam<DType> {
 protected:
  DeviceArray<uint16_t> Dev(const std::vector<float>& f) {
    DeviceArray<uint16_t> d(f.size());
    EXPECT_EQ(d.Upload(testing::ToStorage(f, GetParam())), cudaSuccess);
    return d;
  }
  std::vector<float> Host(const DeviceArray<uint16_t>& d) {
    return testing::FromStorage(d.Download(), GetParam());
  }
  std::mt19937 rng_{5};
};

TEST_P(LayerOpsTest, RmsNormWithAndWithoutResidual) {
  HKV_REQUIRE_GPU();
  const DType t = GetParam();
  const int32_t rows = 5, dim = 4096;
  const auto x = testing::RandomValues(rows * dim, 2.0f, t, rng_);
  const auto r = testing::RandomValues(rows * dim, 2.0f, t, rng_);
  const auto w = testing::RandomValues(dim, 1.0f, t, rng_);
  auto dx = Dev(x), dr = Dev(r), dw = Dev(w);
  DeviceArray<uint16_t> out(x.size());
  HKV_CUDA_OK(RmsNorm(t, dx.get(), nullptr, dw.get(), out.get(), rows, dim, 1e-5f, nullptr));
  std::vector<float> expect(x.size());
  ref::RmsNorm(x.data(), nullptr, w.data(), rows, dim, 1e-5f, expect.data());
  EXPECT_LT(testing::RelError(Host(out), expect), testing::Tolerance(t));
  HKV_CUDA_OK(RmsNorm(t, dx.get(), dr.get(), dw.get(), out.get(), rows, dim, 1e-5f, nullptr));
  std::vector<float> res = r;
  ref::RmsNorm(x.data(), res.data(), w.data(), rows, dim, 1e-5f, expect.data());
  EXPECT_LT(testing::RelError(Host(out), expect), testing::Tolerance(t));
  EXPECT_LT(testing::RelError(Host(dr), res), testing::Tolerance(t));
  EXPECT_EQ(RmsNorm(t, dx.get(), nullptr, dw.get(), out.get(), rows, 100, 1e-5f, nullptr),
            cudaErrorInvalidValue);
}

TEST_P(LayerOpsTest, RopeBothPairings) {
  HKV_REQUIRE_GPU();
  const DType t = GetParam();
  const int32_t tokens = 7;
  std::vector<int32_t> pos{0, 1, 2, 100, 4095, 70000, 131071};
  DeviceArray<int32_t> dpos(pos.size());
  HKV_CUDA_OK(dpos.Upload(pos));
  struct Shape {
    int32_t hq, hk, d;
  };
  // Heads in one block and over several (vector kernel), and a head_dim the vector kernel
  // cannot take (40: pairs not a multiple of 8).
  for (const Shape& sh : {Shape{4, 2, 128}, Shape{32, 8, 128}, Shape{12, 4, 64}, Shape{3, 1, 40}}) {
    const int32_t hq = sh.hq, hk = sh.hk, d = sh.d;
    std::vector<float> inv(d / 2);
    for (int32_t i = 0; i < d / 2; ++i) inv[i] = 0.5f * std::pow(500000.0f, -2.0f * i / d);
    DeviceArray<float> dinv(inv.size());
    HKV_CUDA_OK(dinv.Upload(inv));
    for (bool interleaved : {false, true}) {
      for (bool table : {false, true}) {
        auto q = testing::RandomValues(tokens * hq * d, 1.0f, t, rng_);
        auto k = testing::RandomValues(tokens * hk * d, 1.0f, t, rng_);
        auto dq = Dev(q), dk = Dev(k);
        HKV_CUDA_OK(Rope(t, dq.get(), hq * d, hq, dk.get(), hk * d, hk, dpos.get(), tokens, d,
                         500000.0f, table ? dinv.get() : nullptr,
                         interleaved ? RopeStyle::kInterleaved : RopeStyle::kRotateHalf, nullptr));
        ref::Rope(q.data(), tokens, hq, d, pos.data(), 500000.0f, table ? inv.data() : nullptr,
                  interleaved);
        ref::Rope(k.data(), tokens, hk, d, pos.data(), 500000.0f, table ? inv.data() : nullptr,
                  interleaved);
        // fp32 angles at position 131071 carry ~1e-2 rad of error, as in every fp32 RoPE.
        EXPECT_LT(testing::RelError(Host(dq), q), 2 * testing::Tolerance(t))
            << interleaved << " d=" << d << " hq=" << hq;
        EXPECT_LT(testing::RelError(Host(dk), k), 2 * testing::Tolerance(t))
            << interleaved << " d=" << d << " hq=" << hq;
      }
    }
  }
}

// The 16-byte kernel (aligned rows) and the scalar one (the same rows one element off their
// alignment) give the same bits, so a step's rounding never depends on where its rows sit.
TEST_P(LayerOpsTest, RopeAndSwiGluVectorKernelsMatchTheScalarOnesBitForBit) {
  HKV_REQUIRE_GPU();
  const DType t = GetParam();
  const int32_t tokens = 5, hq = 12, hk = 4, d = 128;
  std::vector<int32_t> pos{0, 3, 511, 4096, 100000};
  DeviceArray<int32_t> dpos(pos.size());
  HKV_CUDA_OK(dpos.Upload(pos));
  const int64_t stride = (hq + hk) * d;
  const auto x = testing::ToStorage(testing::RandomValues(tokens * stride, 1.0f, t, rng_), t);
  for (RopeStyle style : {RopeStyle::kRotateHalf, RopeStyle::kInterleaved}) {
    DeviceArray<uint16_t> aligned(x.size()), shifted(x.size() + 1);
    HKV_CUDA_OK(aligned.Upload(x));
    std::vector<uint16_t> padded(1, 0);
    padded.insert(padded.end(), x.begin(), x.end());
    HKV_CUDA_OK(shifted.Upload(padded));
    uint16_t* a = aligned.get();
    uint16_t* b = shifted.get() + 1;  // 2 bytes past a 16-byte boundary: the scalar kernel
    HKV_CUDA_OK(Rope(t, a, stride, hq, a + hq * d, stride, hk, dpos.get(), tokens, d, 500000.0f,
                     nullptr, style, nullptr));
    HKV_CUDA_OK(Rope(t, b, stride, hq, b + hq * d, stride, hk, dpos.get(), tokens, d, 500000.0f,
                     nullptr, style, nullptr));
    std::vector<uint16_t> got_b = shifted.Download();
    got_b.erase(got_b.begin());
    EXPECT_EQ(aligned.Download(), got_b);
  }
  const int32_t dim = 1024;
  const auto gu = testing::ToStorage(testing::RandomValues(tokens * 2 * dim, 4.0f, t, rng_), t);
  DeviceArray<uint16_t> dgu(gu.size()), out_vec(tokens * dim), out_scalar(tokens * dim + 1);
  HKV_CUDA_OK(dgu.Upload(gu));
  HKV_CUDA_OK(SwiGlu(t, dgu.get(), dgu.get() + dim, 2 * dim, out_vec.get(), tokens, dim, nullptr));
  HKV_CUDA_OK(
      SwiGlu(t, dgu.get(), dgu.get() + dim, 2 * dim, out_scalar.get() + 1, tokens, dim, nullptr));
  std::vector<uint16_t> scalar = out_scalar.Download();
  scalar.erase(scalar.begin());
  EXPECT_EQ(out_vec.Download(), scalar);
}

TEST_P(LayerOpsTest, SwiGluAndEmbedding) {
  HKV_REQUIRE_GPU();
  const DType t = GetParam();
  const int32_t tokens = 3, dim = 1000;
  const auto gu = testing::RandomValues(tokens * 2 * dim, 4.0f, t, rng_);  // [tokens, gate|up]
  auto dgu = Dev(gu);
  DeviceArray<uint16_t> out(tokens * dim);
  HKV_CUDA_OK(SwiGlu(t, dgu.get(), dgu.get() + dim, 2 * dim, out.get(), tokens, dim, nullptr));
  std::vector<float> expect(tokens * dim);
  for (int32_t r = 0; r < tokens; ++r) {
    ref::SwiGlu(gu.data() + r * 2 * dim, gu.data() + r * 2 * dim + dim, dim,
                expect.data() + r * dim);
  }
  EXPECT_LT(testing::RelError(Host(out), expect), testing::Tolerance(t));

  const int32_t vocab = 50, edim = 64;
  const auto table = testing::RandomValues(vocab * edim, 1.0f, t, rng_);
  auto dtable = Dev(table);
  std::vector<int32_t> ids{3, 49, 0, -1, 50, 7};
  DeviceArray<int32_t> dids(ids.size());
  HKV_CUDA_OK(dids.Upload(ids));
  DeviceArray<uint16_t> emb(ids.size() * edim);
  HKV_CUDA_OK(EmbeddingLookup(t, dtable.get(), vocab, edim, dids.get(),
                              static_cast<int32_t>(ids.size()), emb.get(), nullptr));
  const auto got = Host(emb);
  for (size_t i = 0; i < ids.size(); ++i) {
    for (int32_t x = 0; x < edim; ++x) {
      const float want = ids[i] >= 0 && ids[i] < vocab ? table[ids[i] * edim + x] : 0.0f;
      ASSERT_EQ(got[i * edim + x], want) << "token " << i;
    }
  }
}

TEST_P(LayerOpsTest, AppendDecodeAndSlots) {
  HKV_REQUIRE_GPU();
  const DType t = GetParam();
  const int32_t hkv = 2, d = 128, bs = 16, seqs = 2;
  // Rows (seq, head): lengths after append 1, 16, 17, 40 -> last block fill 1, 16, 1, 8.
  std::vector<int32_t> indptr{0, 1, 2, 4, 7}, indices{6, 0, 5, 1, 2, 3, 4}, last{1, 16, 1, 8};
  DeviceArray<int32_t> dind(indptr.size()), didx(indices.size()), dlast(last.size());
  HKV_CUDA_OK(dind.Upload(indptr));
  HKV_CUDA_OK(didx.Upload(indices));
  HKV_CUDA_OK(dlast.Upload(last));
  DeviceArray<uint16_t> kp(7 * bs * d), vp(7 * bs * d);
  HKV_CUDA_OK(kp.Fill(0));
  HKV_CUDA_OK(vp.Fill(0));
  const auto kn = testing::RandomValues(seqs * hkv * d, 1.0f, t, rng_);
  const auto vn = testing::RandomValues(seqs * hkv * d, 1.0f, t, rng_);
  auto dkn = Dev(kn), dvn = Dev(vn);
  const PagedKvView view{dind.get(), didx.get(), dlast.get(), kp.get(), vp.get(),
                         bs * d,     bs,         hkv,         d};
  HKV_CUDA_OK(AppendDecodeKv(t, view, dkn.get(), dvn.get(), hkv * d, seqs, nullptr));
  auto kh = Host(kp), vh = Host(vp);
  for (int32_t row = 0; row < seqs * hkv; ++row) {
    const int64_t dst = static_cast<int64_t>(indices[indptr[row + 1] - 1]) * bs * d +
                        static_cast<int64_t>(last[row] - 1) * d;
    for (int32_t x = 0; x < d; ++x) {
      ASSERT_EQ(kh[dst + x], kn[row * d + x]) << "row " << row;
      ASSERT_EQ(vh[dst + x], vn[row * d + x]) << "row " << row;
    }
  }
  // The same CSR read as one sequence with 2 layers (rows (seq, layer, head)): layer 1 of
  // sequence 0 is CSR rows 2 and 3.
  PagedKvView layered = view;
  layered.row_seq_stride = 2 * hkv;
  layered.row_offset = hkv;
  const auto kn2 = testing::RandomValues(hkv * d, 1.0f, t, rng_);
  auto dkn2 = Dev(kn2);
  HKV_CUDA_OK(AppendDecodeKv(t, layered, dkn2.get(), dkn2.get(), hkv * d, 1, nullptr));
  kh = Host(kp);
  for (int32_t h = 0; h < hkv; ++h) {
    const int32_t row = hkv + h;
    const int64_t dst = static_cast<int64_t>(indices[indptr[row + 1] - 1]) * bs * d +
                        static_cast<int64_t>(last[row] - 1) * d;
    for (int32_t x = 0; x < d; ++x) ASSERT_EQ(kh[dst + x], kn2[h * d + x]) << "layered " << h;
  }
  std::vector<int64_t> slots{3 * bs + 2, -1, 0, 6 * bs + 15};  // [tokens=2, hkv=2]
  DeviceArray<int64_t> dslots(slots.size());
  HKV_CUDA_OK(dslots.Upload(slots));
  HKV_CUDA_OK(AppendKvSlots(t, view, dkn.get(), dvn.get(), hkv * d, dslots.get(), 2, nullptr));
  kh = Host(kp);
  for (size_t i = 0; i < slots.size(); ++i) {
    if (slots[i] < 0) continue;
    for (int32_t x = 0; x < d; ++x) ASSERT_EQ(kh[slots[i] * d + x], kn[i * d + x]) << i;
  }
}

TEST_P(LayerOpsTest, GemmRowMajor) {
  HKV_REQUIRE_GPU();
  const DType t = GetParam();
  const int32_t m = 33, n = 70, k = 256;
  const auto a = testing::RandomValues(m * k, 1.0f, t, rng_);
  const auto w = testing::RandomValues(n * k, 1.0f, t, rng_);
  auto da = Dev(a), dw = Dev(w);
  DeviceArray<uint16_t> c(m * n);
  DeviceArray<float> c32(m * n);
  cublasHandle_t h;
  ASSERT_EQ(cublasCreate(&h), CUBLAS_STATUS_SUCCESS);
  ASSERT_EQ(GemmRowMajor(h, t, da.get(), k, dw.get(), k, c.get(), n, false, m, n, k),
            CUBLAS_STATUS_SUCCESS);
  ASSERT_EQ(GemmRowMajor(h, t, da.get(), k, dw.get(), k, c32.get(), n, true, m, n, k),
            CUBLAS_STATUS_SUCCESS);
  HKV_CUDA_OK(cudaDeviceSynchronize());
  cublasDestroy(h);
  std::vector<float> expect(m * n);
  for (int32_t i = 0; i < m; ++i) {
    for (int32_t j = 0; j < n; ++j) {
      double s = 0.0;
      for (int32_t x = 0; x < k; ++x) s += static_cast<double>(a[i * k + x]) * w[j * k + x];
      expect[i * n + j] = static_cast<float>(s);
    }
  }
  EXPECT_LT(testing::RelError(Host(c), expect), testing::Tolerance(t));
  EXPECT_LT(testing::RelError(c32.Download(), expect), 1e-4);
}

INSTANTIATE_TEST_SUITE_P(All, LayerOpsTest, ::testing::Values(DType::kBf16, DType::kFp16),
                         [](const ::testing::TestParamInfo<DType>& i) {
                           return std::string(testing::Name(i.param));
                         });

}  // namespace
}  // namespace hkv::kernels
