#include "workers/sampler.h"

#include <cmath>
#include <limits>
#include <map>
#include <set>

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

// A straightforward reference of the penalties, written out per token.
std::vector<float> ReferencePenalties(std::vector<float> logits, const StepSampling& p,
                                      const std::vector<TokenId>& prompt,
                                      const std::vector<TokenId>& output) {
  for (size_t t = 0; t < logits.size(); ++t) {
    const TokenId id = static_cast<TokenId>(t);
    const bool in_prompt = std::count(prompt.begin(), prompt.end(), id) > 0;
    const int count = static_cast<int>(std::count(output.begin(), output.end(), id));
    if (in_prompt || count > 0) {
      logits[t] =
          logits[t] > 0 ? logits[t] / p.repetition_penalty : logits[t] * p.repetition_penalty;
    }
    logits[t] -= p.frequency_penalty * count + (count > 0 ? p.presence_penalty : 0.0f);
  }
  return logits;
}

// Feeds a prompt prefill and one decode step per output token through TokenHistories.
TokenHistories HistoryOf(const StepSampling& p, const std::vector<TokenId>& prompt,
                         const std::vector<TokenId>& output, std::vector<TokenId> banned = {}) {
  TokenHistories h;
  Batch b;
  SequenceStep s;
  s.id = 7;
  s.sampling = p;
  s.num_prompt_tokens = static_cast<int32_t>(prompt.size());
  s.tokens = prompt;
  s.min_tokens_banned = std::move(banned);
  b.seqs = {s};
  h.Observe(b);
  for (size_t i = 0; i < output.size(); ++i) {
    b.seqs[0].start_pos = static_cast<int32_t>(prompt.size() + i);
    b.seqs[0].tokens = {output[i]};
    b.seqs[0].min_tokens_banned.clear();
    h.Observe(b);
  }
  return h;
}

TEST(SamplerTest, PenaltiesMatchTheReference) {
  const std::vector<float> logits = {1.5f, -0.5f, 2.0f, 0.25f, -2.0f, 0.0f, 3.0f};
  const std::vector<TokenId> prompt = {0, 1, 1};
  const std::vector<TokenId> output = {2, 2, 4, 6, 2};
  StepSampling p;
  p.presence_penalty = 0.5f;
  p.frequency_penalty = 0.25f;
  p.repetition_penalty = 1.3f;
  TokenHistories h = HistoryOf(p, prompt, output);
  ASSERT_NE(h.Find(7), nullptr);
  EXPECT_EQ(h.Find(7)->num_generated, 5);
  std::vector<float> got = logits;
  ApplyPenalties(absl::MakeSpan(got), p, *h.Find(7));
  const std::vector<float> want = ReferencePenalties(logits, p, prompt, output);
  for (size_t i = 0; i < logits.size(); ++i) EXPECT_FLOAT_EQ(got[i], want[i]) << i;
  // Token 3 and 5 appear nowhere: untouched.
  EXPECT_EQ(got[3], logits[3]);
  EXPECT_EQ(got[5], logits[5]);
}

TEST(SamplerTest, HistoryStartsAgainAtPositionZeroAndChecksItsLength) {
  StepSampling p;
  p.frequency_penalty = 1.0f;
  TokenHistories h = HistoryOf(p, {1, 2}, {3, 3});
  SequenceStep s;
  s.id = 7;
  s.sampling = p;
  s.sample = true;
  s.sample_step = 2;
  EXPECT_TRUE(h.CheckFor(s).ok());
  s.sample_step = 3;
  EXPECT_EQ(h.CheckFor(s).code(), absl::StatusCode::kInternal);
  // A recompute: the prompt and generated tokens again as one prefill chunk.
  Batch b;
  s.start_pos = 0;
  s.num_prompt_tokens = 2;
  s.tokens = {1, 2, 3};
  s.sample_step = 1;
  b.seqs = {s};
  h.Observe(b);
  EXPECT_TRUE(h.CheckFor(s).ok());
  EXPECT_EQ(h.Find(7)->output_counts.at(3), 1);
  // Released sequences keep nothing; plain sampling keeps no state at all.
  b.seqs.clear();
  b.released = {7};
  h.Observe(b);
  EXPECT_EQ(h.size(), 0u);
  EXPECT_EQ(HistoryOf(StepSampling{}, {1}, {2}).size(), 0u);
  // A fork copies its parent's history.
  TokenHistories f = HistoryOf(p, {1, 2}, {3});
  Batch fork;
  fork.forks = {{7, 8}};
  f.Observe(fork);
  ASSERT_NE(f.Find(8), nullptr);
  EXPECT_EQ(f.Find(8)->output_counts.at(3), 1);
}

TEST(SamplerTest, MinTokensBansStopTokensUntilReached) {
  std::vector<float> logits = {0.0f, 10.0f, 1.0f};  // Token 1 (say EOS) dominates.
  StepSampling p;
  p.min_tokens = 2;
  for (int generated = 0; generated < 4; ++generated) {
    std::vector<TokenId> output(generated, 2);
    TokenHistories h = HistoryOf(p, {0}, output, /*banned=*/{1});
    std::vector<float> l = logits;
    ApplyPenalties(absl::MakeSpan(l), p, *h.Find(7));
    EXPECT_EQ(SampleToken(l, p, generated), generated < 2 ? 2 : 1) << generated;
  }
  // Banning every token would leave nothing to sample: the ban gives way.
  TokenHistories h = HistoryOf(p, {0}, {}, /*banned=*/{0, 1, 2});
  std::vector<float> l = logits;
  ApplyPenalties(absl::MakeSpan(l), p, *h.Find(7));
  EXPECT_EQ(l, logits);
}

TEST(SamplerTest, MinPDropsTokensBelowAFractionOfTheTop) {
  // Probabilities at T = 1: 0.5, 0.25, 0.125, 0.125.
  const std::vector<float> logits = {std::log(4.0f), std::log(2.0f), 0.0f, 0.0f};
  StepSampling p;
  p.temperature = 1.0f;
  p.min_p = 0.4f;  // Keeps p >= 0.2: tokens 0 and 1, renormalised to 2/3, 1/3.
  std::map<int, int> seen;
  const int n = 6000;
  for (int step = 0; step < n; ++step) seen[SampleToken(logits, p, step)]++;
  EXPECT_EQ(seen.size(), 2u);
  EXPECT_NEAR(static_cast<double>(seen[0]) / n, 2.0 / 3.0, 0.03);
  p.min_p = 1.0f;  // Only the top.
  for (int step = 0; step < 100; ++step) EXPECT_EQ(SampleToken(logits, p, step), 0);
  p.min_p = 0.0f;  // Off: all four.
  seen.clear();
  for (int step = 0; step < 2000; ++step) seen[SampleToken(logits, p, step)]++;
  EXPECT_EQ(seen.size(), 4u);
}

TEST(SamplerTest, LogprobsAreLogSoftmaxWithTheTopK) {
  const std::vector<float> logits = {0.5f, 2.0f, -1.0f, 2.0f, 1.0f};
  double z = 0;
  for (float l : logits) z += std::exp(l);
  const TokenLogprobs lp = ComputeLogprobs(logits, 4, 3);
  EXPECT_EQ(lp.token, 4);
  EXPECT_NEAR(lp.logprob, 1.0 - std::log(z), 1e-6);
  // Largest first, lower id first on ties.
  EXPECT_EQ(lp.top_ids, (std::vector<TokenId>{1, 3, 4}));
  ASSERT_EQ(lp.top_logprobs.size(), 3u);
  EXPECT_NEAR(lp.top_logprobs[0], 2.0 - std::log(z), 1e-6);
  EXPECT_NEAR(lp.top_logprobs[2], lp.logprob, 1e-7);
  EXPECT_TRUE(ComputeLogprobs(logits, 0, 0).top_ids.empty());
  EXPECT_EQ(ComputeLogprobs(logits, 0, 99).top_ids.size(), logits.size());
}

TEST(SamplerTest, SampleSequenceDrawsNSamplesWithTheirOwnSeeds) {
  std::vector<float> logits(50);
  for (int i = 0; i < 50; ++i) logits[i] = std::sin(i * 0.7f);
  SequenceStep s;
  s.id = 3;
  s.sample = true;
  s.sampling.temperature = 1.0f;
  s.sampling.seed = 42;
  s.sampling.logprobs = 2;
  s.num_samples = 6;
  TokenHistories none;
  SequenceResult r;
  std::vector<float> l = logits;
  SampleSequence(s, none, l, &r);
  ASSERT_EQ(r.extra_tokens.size(), 5u);
  ASSERT_EQ(r.logprobs.size(), 6u);
  // Sample 0 is what n = 1 samples; sample i what a request seeded SampleSeed(42, i) samples.
  StepSampling one = s.sampling;
  EXPECT_EQ(r.token, SampleToken(logits, one, 0));
  std::set<TokenId> distinct = {r.token};
  for (int i = 1; i < 6; ++i) {
    one.seed = SampleSeed(42, i);
    EXPECT_EQ(r.extra_tokens[i - 1], SampleToken(logits, one, 0));
    EXPECT_EQ(r.logprobs[i].token, r.extra_tokens[i - 1]);
    distinct.insert(r.extra_tokens[i - 1]);
  }
  EXPECT_GT(distinct.size(), 1u);
}

}  // namespace
}  // namespace hkv
