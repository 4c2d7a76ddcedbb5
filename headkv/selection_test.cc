#include "headkv/selection.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>
#include <numeric>
#include <random>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "headkv/head_budget_planner.h"
#include "headkv/kv_policy.h"

namespace hkv {
namespace {

using ::testing::ElementsAre;
using ::testing::IsEmpty;

// Brute-force window scores in double, written straight from the definition.
std::vector<std::vector<double>> ReferenceScores(const std::vector<float>& q,
                                                 const std::vector<float>& k, int n, int w,
                                                 int hq, int hkv, int d, int kernel,
                                                 bool group_average) {
  const int past = n - w;
  const int group = hq / hkv;
  std::vector<std::vector<double>> per_q(hq, std::vector<double>(past, 0.0));
  for (int h = 0; h < hq; ++h) {
    for (int i = 0; i < w; ++i) {
      std::vector<double> logit(n, -std::numeric_limits<double>::infinity());
      for (int j = 0; j < n; ++j) {
        if (j > past + i) continue;  // causal mask
        double dot = 0;
        for (int e = 0; e < d; ++e) dot += double(q[(i * hq + h) * d + e]) * k[(j * hkv + h / group) * d + e];
        logit[j] = dot / std::sqrt(double(d));
      }
      const double mx = *std::max_element(logit.begin(), logit.end());
      double sum = 0;
      for (double& x : logit) sum += (x = std::exp(x - mx));
      for (int j = 0; j < past; ++j) per_q[h][j] += logit[j] / sum / w;
    }
  }
  std::vector<std::vector<double>> heads;
  if (group_average) {
    heads.assign(hkv, std::vector<double>(past, 0.0));
    for (int h = 0; h < hq; ++h)
      for (int j = 0; j < past; ++j) heads[h / group][j] += per_q[h][j] / group;
  } else {
    heads = per_q;
  }
  for (auto& s : heads) {
    std::vector<double> pooled(past, -1.0);
    for (int j = 0; j < past; ++j)
      for (int t = j - kernel / 2; t <= j + kernel / 2; ++t)
        if (t >= 0 && t < past) pooled[j] = std::max(pooled[j], s[t]);
    s = pooled;
  }
  return heads;
}

// Reference selection: stable sort by descending score keeps lower positions first on ties.
std::vector<int32_t> ReferenceKept(const std::vector<double>& scores, int cap, int n, int w) {
  std::vector<int32_t> idx(scores.size());
  std::iota(idx.begin(), idx.end(), 0);
  std::stable_sort(idx.begin(), idx.end(),
                   [&](int a, int b) { return scores[a] > scores[b]; });
  idx.resize(std::clamp<int>(cap, 0, scores.size()));
  std::sort(idx.begin(), idx.end());
  for (int p = n - w; p < n; ++p) idx.push_back(p);
  return idx;
}

std::vector<float> RandomTensor(std::mt19937& rng, size_t size, float scale) {
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<float> v(size);
  for (float& x : v) x = dist(rng);
  return v;
}

struct Shape {
  int n, w, hq, hkv, d, kernel;
};

TEST(WindowScoresTest, MatchesBruteForce) {
  std::mt19937 rng(7);
  for (const Shape& s : {Shape{40, 8, 8, 4, 8, 7}, Shape{33, 8, 8, 8, 16, 7},
                         Shape{20, 1, 4, 1, 8, 3}, Shape{17, 8, 6, 2, 4, 1},
                         Shape{9, 8, 4, 2, 8, 7}, Shape{64, 16, 4, 4, 8, 5}}) {
    const auto q = RandomTensor(rng, size_t(s.w) * s.hq * s.d, 2.0f);
    const auto k = RandomTensor(rng, size_t(s.n) * s.hkv * s.d, 2.0f);
    for (bool group : {false, true}) {
      const auto got = WindowScores(q.data(), k.data(), s.n, s.w, s.hq, s.hkv, s.d, s.kernel,
                                    group);
      const auto want = ReferenceScores(q, k, s.n, s.w, s.hq, s.hkv, s.d, s.kernel, group);
      ASSERT_EQ(got.size(), size_t(group ? s.hkv : s.hq));
      for (size_t h = 0; h < got.size(); ++h) {
        ASSERT_EQ(got[h].size(), size_t(s.n - s.w));
        for (int j = 0; j < s.n - s.w; ++j) {
          EXPECT_NEAR(got[h][j], want[h][j], 1e-5) << "n=" << s.n << " h=" << h << " j=" << j;
        }
      }
    }
  }
}

TEST(WindowScoresTest, HandComputedCausalMask) {
  // One head, d = 1, q = 0: every visible key gets equal weight. Window query 0 (position 1)
  // sees keys 0..1, query 1 (position 2) sees 0..2: position 0 scores (1/2 + 1/3) / 2.
  const std::vector<float> q = {0.0f, 0.0f};
  const std::vector<float> k = {1.0f, -2.0f, 3.0f};
  const auto got = WindowScores(q.data(), k.data(), 3, 2, 1, 1, 1, 7, false);
  ASSERT_EQ(got.size(), 1u);
  ASSERT_EQ(got[0].size(), 1u);
  EXPECT_NEAR(got[0][0], 5.0 / 12.0, 1e-7);
}

TEST(WindowScoresTest, MaxPoolSpreadsAPeak) {
  // q . k is large only at position 5, so after pooling with kernel 3 positions 4..6 share the
  // peak and the rest stay small.
  const int n = 12, w = 1;
  std::vector<float> q = {1.0f};
  std::vector<float> k(n, 0.0f);
  k[5] = 20.0f;
  const auto got = WindowScores(q.data(), k.data(), n, w, 1, 1, 1, 3, false);
  for (int j = 0; j < n - w; ++j) {
    if (j >= 4 && j <= 6) {
      EXPECT_GT(got[0][j], 0.99f) << j;
      EXPECT_EQ(got[0][j], got[0][5]);
    } else {
      EXPECT_LT(got[0][j], 0.01f) << j;
    }
  }
}

TEST(WindowScoresTest, WindowOnlyPromptHasNoScores) {
  std::vector<float> q(8 * 2 * 4, 0.5f), k(8 * 1 * 4, 0.25f);
  const auto got = WindowScores(q.data(), k.data(), 8, 8, 2, 1, 4, 7, true);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_THAT(got[0], IsEmpty());
}

TEST(SelectKeptTest, TiesPreferLowerPositions) {
  const std::vector<float> scores = {0.5f, 0.9f, 0.5f, 0.9f, 0.1f, 0.5f};
  EXPECT_THAT(SelectKept(scores, 3, 8, 2), ElementsAre(0, 1, 3, 6, 7));
  EXPECT_THAT(SelectKept(scores, 4, 8, 2), ElementsAre(0, 1, 2, 3, 6, 7));
  EXPECT_THAT(SelectKept(scores, 0, 8, 2), ElementsAre(6, 7));
  EXPECT_THAT(SelectKept(scores, 100, 8, 2), ElementsAre(0, 1, 2, 3, 4, 5, 6, 7));
  EXPECT_THAT(SelectKept(scores, -3, 8, 2), ElementsAre(6, 7));
}

TEST(SelectKeptTest, NanRanksLowest) {
  const std::vector<float> scores = {std::nanf(""), 0.0f, 0.2f};
  EXPECT_THAT(SelectKept(scores, 2, 4, 1), ElementsAre(1, 2, 3));
}

TEST(SelectKeptTest, WindowOnly) {
  EXPECT_THAT(SelectKept({}, 5, 3, 3), ElementsAre(0, 1, 2));
}

TEST(SelectKeptTest, MatchesStableSortOnRandomScoresWithTies) {
  std::mt19937 rng(3);
  std::uniform_int_distribution<int> level(0, 9);  // few distinct values: many ties
  for (int trial = 0; trial < 200; ++trial) {
    const int past = 1 + trial % 50, w = 1 + trial % 5;
    std::vector<float> f(past);
    std::vector<double> d(past);
    for (int j = 0; j < past; ++j) d[j] = f[j] = level(rng) * 0.125f;
    const int cap = trial % (past + 3);
    EXPECT_EQ(SelectKept(f, cap, past + w, w), ReferenceKept(d, cap, past + w, w));
  }
}

// Greedy reference: floor for everyone, then the best remaining (score, head, position) one
// at a time, a head's candidates being its scores in its own ranked order past the floor.
std::vector<int32_t> ReferenceAdaKv(const std::vector<std::vector<float>>& s, int budget,
                                    float alpha) {
  const int H = s.size(), past = s[0].size();
  const int total = std::min(budget, H * past);
  const int fl = std::min<int>(past, std::floor(double(alpha) * budget / H));
  std::vector<std::vector<int>> order(H);
  for (int h = 0; h < H; ++h) {
    std::vector<double> d(s[h].begin(), s[h].end());
    order[h] = ReferenceKept(d, past, past, 0);  // ascending positions; re-rank below
    std::stable_sort(order[h].begin(), order[h].end(),
                     [&](int a, int b) { return s[h][a] > s[h][b]; });
  }
  std::vector<int32_t> caps(H, fl);
  for (int taken = H * fl; taken < total; ++taken) {
    int best = -1;
    for (int h = 0; h < H; ++h) {
      if (caps[h] >= past) continue;
      if (best < 0) { best = h; continue; }
      const int pb = order[best][caps[best]], ph = order[h][caps[h]];
      if (s[h][ph] > s[best][pb]) best = h;
    }
    ++caps[best];
  }
  return caps;
}

TEST(AdaKvAllocateTest, HandComputed) {
  const std::vector<std::vector<float>> s = {{0.9f, 0.8f, 0.7f, 0.6f}, {0.1f, 0.05f, 0.02f, 0.01f}};
  EXPECT_THAT(AdaKvAllocate(s, 4, 0.5f), ElementsAre(3, 1));   // floor 1 each, then 0.8, 0.7
  EXPECT_THAT(AdaKvAllocate(s, 4, 0.0f), ElementsAre(4, 0));
  EXPECT_THAT(AdaKvAllocate(s, 4, 1.0f), ElementsAre(2, 2));
  EXPECT_THAT(AdaKvAllocate(s, 100, 0.2f), ElementsAre(4, 4));  // clipped to n - w
  EXPECT_THAT(AdaKvAllocate(s, 0, 0.2f), ElementsAre(0, 0));
  // Equal scores across heads: the lower head wins the tie.
  EXPECT_THAT(AdaKvAllocate({{0.5f, 0.5f}, {0.5f, 0.5f}}, 3, 0.0f), ElementsAre(2, 1));
}

TEST(AdaKvAllocateTest, InvariantsAndReferenceOnRandomScores) {
  std::mt19937 rng(11);
  std::uniform_int_distribution<int> level(0, 30);
  for (int trial = 0; trial < 300; ++trial) {
    const int H = 1 + trial % 8, past = trial % 40;
    std::vector<std::vector<float>> s(H, std::vector<float>(past));
    for (auto& h : s)
      for (float& x : h) x = level(rng) / 30.0f;
    const int budget = (trial * 7) % (H * 50 + 1);
    const float alpha = (trial % 6) / 5.0f;
    const auto caps = AdaKvAllocate(s, budget, alpha);
    ASSERT_EQ(caps.size(), size_t(H));
    const int fl = std::min<int>(past, std::floor(double(alpha) * budget / H));
    for (int c : caps) {
      EXPECT_GE(c, fl);
      EXPECT_LE(c, past);
    }
    EXPECT_EQ(std::accumulate(caps.begin(), caps.end(), 0), std::min(budget, H * past));
    if (past > 0) EXPECT_EQ(caps, ReferenceAdaKv(s, budget, alpha)) << "trial " << trial;
  }
}

// End to end per policy: the plan's caps (or Ada-KV's split) applied to library scores give
// the same kept positions as the brute-force scores and selection.
TEST(PolicySelectionTest, EveryPolicyMatchesBruteForce) {
  const int L = 3, hq = 4, hkv = 2, d = 8, w = 8;
  auto scores = std::make_shared<HeadScores>();
  scores->num_layers = L;
  scores->num_heads = hq;
  scores->importance = {0.02, 0.1, 0.03, 0.05, 0.2, 0.01, 0.04, 0.15, 0.1, 0.1, 0.1, 0.1};
  std::mt19937 rng(5);
  for (KvPolicyName name : {KvPolicyName::kFull, KvPolicyName::kSnapKv,
                            KvPolicyName::kPyramidKv, KvPolicyName::kAdaKv,
                            KvPolicyName::kHeadKv}) {
    for (Granularity g : {Granularity::kKvHead, Granularity::kQueryHead}) {
      KvPolicy policy;
      policy.name = name;
      policy.budget = 24;
      policy.granularity = g;
      policy.scores = scores;
      const bool group = g == Granularity::kKvHead;
      const int heads = group ? hkv : hq;
      auto plan = HeadBudgetPlanner::Plan(policy, L, heads);
      ASSERT_TRUE(plan.ok()) << plan.status();
      for (int n : {8, 20, 24, 25, 70}) {  // n == w, n < B, n == B, just over, well over
        const auto q = RandomTensor(rng, size_t(w) * hq * d, 1.5f);
        const auto k = RandomTensor(rng, size_t(n) * hkv * d, 1.5f);
        const auto got = WindowScores(q.data(), k.data(), n, w, hq, hkv, d, 7, group);
        const auto want = ReferenceScores(q, k, n, w, hq, hkv, d, 7, group);
        EXPECT_EQ(plan->compresses(n), name != KvPolicyName::kFull && n > policy.budget);
        std::vector<int32_t> caps;
        if (!plan->compresses(n)) {
          caps.assign(heads, n - w);  // everything
        } else if (plan->adaptive) {
          caps = AdaKvAllocate(got, plan->layer_budget[0], policy.ada_alpha);
        } else {
          const auto kept = plan->KeptTokens(n);
          for (int h = 0; h < heads; ++h) caps.push_back(kept[h] - w);  // layer 0
        }
        for (int h = 0; h < heads; ++h) {
          const auto kept = SelectKept(got[h], caps[h], n, w);
          EXPECT_EQ(kept, ReferenceKept(want[h], caps[h], n, w))
              << PolicyNameString(name) << " n=" << n << " head " << h;
          if (!plan->compresses(n)) EXPECT_EQ(int(kept.size()), n);
          EXPECT_EQ(int(kept.size()), std::min(caps[h], n - w) + w);
        }
      }
    }
  }
}

}  // namespace
}  // namespace hkv
