// On-device sampling: greedy, membership in the top-k/top-p set, and the drawn frequencies
// under stratified uniforms against the reference distribution.

#include "kernels/sampling.h"

#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "kernels/reference.h"
#include "kernels/test_util.h"

namespace hkv::kernels {
namespace {

using testing::DeviceArray;

std::vector<int32_t> Sample(const std::vector<float>& logits, int32_t rows, int32_t vocab,
                            const std::vector<SamplingRow>& params) {
  DeviceArray<float> dl(logits.size());
  DeviceArray<SamplingRow> dp(params.size());
  DeviceArray<int32_t> out(rows);
  EXPECT_EQ(dl.Upload(logits), cudaSuccess);
  EXPECT_EQ(dp.Upload(params), cudaSuccess);
  EXPECT_EQ(out.Fill(0xff), cudaSuccess);
  EXPECT_EQ(SampleTokens(dl.get(), vocab, rows, vocab, dp.get(), out.get(), nullptr), cudaSuccess);
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  return out.Download();
}

TEST(SamplingTest, GreedyIsArgmaxWithLowestTie) {
  HKV_REQUIRE_GPU();
  const int32_t vocab = 128256, rows = 4;
  std::mt19937 rng(3);
  std::normal_distribution<float> dist(0.0f, 3.0f);
  std::vector<float> logits(static_cast<size_t>(rows) * vocab);
  for (float& x : logits) x = dist(rng);
  logits[0 * vocab + 77] = 100.0f;
  logits[1 * vocab + 5000] = 100.0f;
  logits[1 * vocab + 4000] = 100.0f;  // tie: lower id wins
  logits[2 * vocab + vocab - 1] = 100.0f;
  logits[3 * vocab + 9] = 100.0f;
  std::vector<SamplingRow> params(rows);
  params[3].temperature = 1.0f;
  params[3].top_k = 1;  // top-k 1 is greedy too
  params[3].uniform = 0.99f;
  const auto got = Sample(logits, rows, vocab, params);
  EXPECT_EQ(got, (std::vector<int32_t>{77, 4000, vocab - 1, 9}));
}

struct Case {
  float temperature;
  int32_t top_k;
  float top_p;
};

class SamplingDistributionTest : public ::testing::TestWithParam<Case> {};

// Stratified uniforms (i + 0.5) / R make the count of each id equal R * p(id) up to +-1 per
// CDF interval boundary; ids outside the allowed set must never appear.
TEST_P(SamplingDistributionTest, StratifiedCountsMatchReference) {
  HKV_REQUIRE_GPU();
  const Case c = GetParam();
  const int32_t vocab = 3000, rows = 4096;
  std::mt19937 rng(11);
  std::normal_distribution<float> dist(0.0f, 2.0f);
  std::vector<float> one(vocab);
  for (float& x : one) x = dist(rng);
  std::vector<float> logits;
  for (int32_t r = 0; r < rows; ++r) logits.insert(logits.end(), one.begin(), one.end());
  std::vector<SamplingRow> params(rows);
  for (int32_t r = 0; r < rows; ++r) {
    params[r] = {c.temperature, c.top_k, c.top_p, (r + 0.5f) / rows};
  }
  const auto got = Sample(logits, rows, vocab, params);
  const auto p = ref::SamplingDistribution(one.data(), vocab, c.temperature, c.top_k, c.top_p);
  std::vector<int32_t> count(vocab, 0);
  for (int32_t id : got) {
    ASSERT_GE(id, 0);
    ASSERT_LT(id, vocab);
    ASSERT_GT(p[id], 0.0) << "id " << id << " is outside the allowed set";
    ++count[id];
  }
  for (int32_t i = 0; i < vocab; ++i) {
    EXPECT_NEAR(count[i], p[i] * rows, 2.0) << "id " << i;
  }
}

INSTANTIATE_TEST_SUITE_P(All, SamplingDistributionTest,
                         ::testing::Values(Case{1.0f, 0, 1.0f}, Case{0.7f, 50, 1.0f},
                                           Case{1.0f, 0, 0.9f}, Case{1.3f, 40, 0.8f},
                                           Case{1.0f, 1000, 0.5f}),
                         [](const ::testing::TestParamInfo<Case>& i) {
                           return "t" + std::to_string(static_cast<int>(i.param.temperature * 10)) +
                                  "_k" + std::to_string(i.param.top_k) + "_p" +
                                  std::to_string(static_cast<int>(i.param.top_p * 100));
                         });

TEST(SamplingArgsTest, RejectsBadShapes) {
  EXPECT_EQ(SampleTokens(nullptr, 10, 1, 0, nullptr, nullptr, nullptr), cudaErrorInvalidValue);
  EXPECT_EQ(SampleTokens(nullptr, 5, 1, 10, nullptr, nullptr, nullptr), cudaErrorInvalidValue);
}

}  // namespace
}  // namespace hkv::kernels
