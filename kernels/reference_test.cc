// CPU checks of the kernel references themselves (run in CPU-only CI): storage conversions,
// and attention / norm / RoPE / sampling on inputs whose answers are known in closed form.

#include "kernels/reference.h"

#include <gtest/gtest.h>

#include <cmath>
#include <vector>

namespace hkv::kernels::ref {
namespace {

TEST(ReferenceTest, StorageConversionsRoundToNearestEven) {
  EXPECT_EQ(FloatToBf16(1.0f), 0x3f80);
  EXPECT_EQ(FloatToBf16(-2.0f), 0xc000);
  EXPECT_EQ(Bf16ToFloat(FloatToBf16(1.00390625f)), 1.0f);  // tie -> even mantissa
  EXPECT_EQ(FloatToHalf(1.0f), 0x3c00);
  EXPECT_EQ(FloatToHalf(65504.0f), 0x7bff);
  EXPECT_EQ(FloatToHalf(1e6f), 0x7c00);                   // overflow -> inf
  EXPECT_EQ(HalfToFloat(0x0001), std::ldexp(1.0f, -24));  // smallest subnormal
  for (float f : {0.1f, -3.75f, 1234.5f, 6e-5f}) {
    EXPECT_NEAR(HalfToFloat(FloatToHalf(f)), f, std::fabs(f) * 1e-3f);
    EXPECT_NEAR(Bf16ToFloat(FloatToBf16(f)), f, std::fabs(f) * 8e-3f);
  }
}

TEST(ReferenceTest, DecodeAttentionOverTwoBlocks) {
  // One row of 3 tokens in blocks {1, 0} (block size 2); q orthogonal to every key, so the
  // softmax is uniform and the output is the mean of the values.
  const int32_t d = 2;
  std::vector<int32_t> indptr{0, 2}, indices{1, 0}, last{1};
  // pool [2 blocks][2 tokens][d]: block 1 holds tokens 0-1, block 0 holds token 2.
  std::vector<float> k{0, 1, 0, 0, 0, 1, 0, 1};
  std::vector<float> v{9, 0, 0, 0, 3, 6, 0, 3};
  HostPagedKv kv{indptr.data(), indices.data(), last.data(), k.data(), v.data(), 4, 2, 1, d};
  EXPECT_EQ(RowLength(kv, 0), 3);
  const float q[2] = {1.0f, 0.0f};
  float out[2];
  DecodeAttention(q, kv, 1, 1, 1.0f, out);
  EXPECT_NEAR(out[0], (3 + 0 + 9) / 3.0f, 1e-6);
  EXPECT_NEAR(out[1], (6 + 3 + 0) / 3.0f, 1e-6);
}

TEST(ReferenceTest, PrefillFirstQuerySeesOnlyItself) {
  const int32_t d = 4, nq = 3;
  std::vector<float> q(nq * d, 0.3f), k(nq * d), v(nq * d);
  for (int32_t i = 0; i < nq * d; ++i) {
    k[i] = static_cast<float>(i % 5);
    v[i] = static_cast<float>(i);
  }
  std::vector<float> out(nq * d);
  PrefillAttention(q.data(), k.data(), v.data(), nq, 1, 1, d, nullptr, 0, 0.5f, out.data());
  for (int32_t x = 0; x < d; ++x) EXPECT_FLOAT_EQ(out[x], v[x]);
}

TEST(ReferenceTest, RmsNormRopeAndSampling) {
  std::vector<float> x(8, -2.0f), w{1, 2, 3, 4, 5, 6, 7, 8}, out(8);
  RmsNorm(x.data(), nullptr, w.data(), 1, 8, 0.0f, out.data());
  for (int32_t i = 0; i < 8; ++i) EXPECT_NEAR(out[i], -w[i], 1e-6);

  std::vector<float> r{1, 2, 3, 4};
  const int32_t pos0 = 0;
  Rope(r.data(), 1, 1, 4, &pos0, 10000.0f, nullptr, false);
  EXPECT_EQ(r, (std::vector<float>{1, 2, 3, 4}));  // position 0 is the identity
  const int32_t pos1 = 1;
  std::vector<float> s{1, 0, 0, 0};
  Rope(s.data(), 1, 1, 4, &pos1, 10000.0f, nullptr, true);  // pair (0,1) rotates by 1 rad
  EXPECT_NEAR(s[0], std::cos(1.0), 1e-6);
  EXPECT_NEAR(s[1], std::sin(1.0), 1e-6);

  const float logits[4] = {0.0f, 2.0f, 1.0f, 2.0f};
  const auto greedy = SamplingDistribution(logits, 4, 0.0f, 0, 1.0f);
  EXPECT_EQ(greedy, (std::vector<double>{0, 1, 0, 0}));  // tie -> lowest id
  const auto top2 = SamplingDistribution(logits, 4, 1.0f, 2, 1.0f);
  EXPECT_DOUBLE_EQ(top2[1], 0.5);
  EXPECT_DOUBLE_EQ(top2[3], 0.5);
  const auto topp = SamplingDistribution(logits, 4, 1.0f, 0, 0.3f);
  EXPECT_DOUBLE_EQ(topp[1] + topp[3], 1.0);  // the tie at the boundary is kept
}

TEST(ReferenceTest, AttentionProbeRanksThePromptUnderTheWholeRowsSoftmax) {
  // One row of 4 tokens (head_dim 1) in blocks {1, 0} of 2: keys 0, 2, 1, 2 in token order.
  const int32_t indptr[] = {0, 2}, indices[] = {1, 0}, last_len[] = {2};
  const float k_pool[] = {1, 2, 0, 2};  // block 0 = tokens 2, 3; block 1 = tokens 0, 1
  HostPagedKv kv{indptr, indices, last_len, k_pool, nullptr, 2, 2, 1, 1};
  const float q = 1.0f;
  const double total = 1 + 2 * std::exp(2.0) + std::exp(1.0);  // over all 4 tokens
  int32_t pos[3];
  float w[3];
  AttentionProbe(&q, kv, 0, /*prompt_len=*/3, /*top_n=*/3, 1.0f, pos, w);
  EXPECT_EQ(pos[0], 1);
  EXPECT_EQ(pos[1], 2);
  EXPECT_EQ(pos[2], 0);
  EXPECT_FLOAT_EQ(w[0], std::exp(2.0) / total);
  EXPECT_FLOAT_EQ(w[1], std::exp(1.0) / total);
  EXPECT_FLOAT_EQ(w[2], 1 / total);
  AttentionProbe(&q, kv, 0, /*prompt_len=*/4, /*top_n=*/2, 1.0f, pos, w);
  EXPECT_EQ(pos[0], 1);  // a tie with token 3 goes to the lower position
  EXPECT_EQ(pos[1], 3);
}

}  // namespace
}  // namespace hkv::kernels::ref
