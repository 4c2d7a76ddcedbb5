#include "workers/sampler.h"

#include <map>

#include "gtest/gtest.h"

namespace hkv {
namespace {

TEST(SamplerTest, GreedyTakesTheLargestAndLowestIdOnTies) {
  StepSampling p;
  EXPECT_EQ(SampleToken(std::vector<float>{0.1f, 3.0f, -1.0f, 3.0f}, p, 0), 1);
}

TEST(SamplerTest, SameSeedAndStepGiveTheSameToken) {
  std::vector<float> logits(100);
  for (int i = 0; i < 100; ++i) logits[i] = (i % 7) * 0.3f;
  StepSampling p;
  p.temperature = 1.0f;
  p.seed = 1234;
  for (int step = 0; step < 50; ++step) {
    EXPECT_EQ(SampleToken(logits, p, step), SampleToken(logits, p, step));
  }
  // Different seeds diverge somewhere.
  StepSampling q = p;
  q.seed = 99;
  int differ = 0;
  for (int step = 0; step < 50; ++step) differ += SampleToken(logits, p, step) != SampleToken(logits, q, step);
  EXPECT_GT(differ, 0);
}

TEST(SamplerTest, FollowsTheSoftmaxDistribution) {
  std::vector<float> logits = {0.0f, std::log(3.0f)};  // p = 0.25, 0.75.
  StepSampling p;
  p.temperature = 1.0f;
  p.seed = 7;
  int ones = 0;
  const int n = 20000;
  for (int step = 0; step < n; ++step) ones += SampleToken(logits, p, step) == 1;
  EXPECT_NEAR(static_cast<double>(ones) / n, 0.75, 0.015);
}

TEST(SamplerTest, TopKAndTopPRestrictTheCandidates) {
  std::vector<float> logits = {5.0f, 4.9f, 4.8f, 0.0f, -1.0f};
  StepSampling p;
  p.temperature = 2.0f;
  p.top_k = 2;
  std::map<int, int> seen;
  for (int step = 0; step < 2000; ++step) seen[SampleToken(logits, p, step)]++;
  EXPECT_EQ(seen.size(), 2u);
  EXPECT_TRUE(seen.count(0) && seen.count(1));
  p.top_k = 0;
  p.top_p = 0.01f;  // Only the most likely token reaches it.
  for (int step = 0; step < 200; ++step) EXPECT_EQ(SampleToken(logits, p, step), 0);
}

TEST(SamplerTest, UniformIsInRange) {
  for (int step = 0; step < 1000; ++step) {
    const double u = SampleUniform(42, step);
    EXPECT_GE(u, 0.0);
    EXPECT_LT(u, 1.0);
  }
}

}  // namespace
}  // namespace hkv
