#include "headkv/rank_assignment.h"

#include <algorithm>
#include <cstdio>
#include <random>

#include "common/paths.h"
#include "gtest/gtest.h"
#include "headkv/head_budget_planner.h"
#include "headkv/head_scores.h"

namespace hkv {
namespace {

// Each layer's slots hold a permutation of its heads, and every rank gets H/R of them.
void ExpectPermutation(const HeadRankAssignment& a) {
  for (int32_t l = 0; l < a.num_layers; ++l) {
    std::vector<int32_t> heads(a.head_of_slot.begin() + l * a.num_heads,
                               a.head_of_slot.begin() + (l + 1) * a.num_heads);
    std::sort(heads.begin(), heads.end());
    for (int32_t h = 0; h < a.num_heads; ++h) ASSERT_EQ(heads[h], h) << "layer " << l;
  }
}

TEST(RankAssignmentTest, ContiguousIsIdentity) {
  auto a = ContiguousAssignment(2, 4, 2);
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(a->head_of_slot, (std::vector<int32_t>{0, 1, 2, 3, 0, 1, 2, 3}));
  EXPECT_EQ(a->RankOfSlot(1), 0);
  EXPECT_EQ(a->RankOfSlot(2), 1);
  EXPECT_FALSE(ContiguousAssignment(2, 6, 4).ok());
}

TEST(RankAssignmentTest, BalancesALopsidedPlan) {
  // Heads 0 and 1 of every layer are heavy: contiguous puts them all on rank 0.
  std::vector<int32_t> load = {100, 90, 10, 5, 100, 90, 10, 5};
  auto contiguous = ContiguousAssignment(2, 4, 2);
  auto balanced = BalancedAssignment(load, 2, 4, 2);
  ASSERT_TRUE(balanced.ok());
  ExpectPermutation(*balanced);
  const auto c = RankLoads(*contiguous, load);
  const auto b = RankLoads(*balanced, load);
  EXPECT_EQ(c, (std::vector<int64_t>{380, 30}));
  EXPECT_EQ(b[0] + b[1], 410);
  EXPECT_LE(std::abs(b[0] - b[1]), 10);
  EXPECT_GT(Imbalance(c), 1.8);
  EXPECT_LT(Imbalance(b), 1.03);
}

TEST(RankAssignmentTest, NeverWorseThanContiguousOnRandomLoads) {
  std::mt19937 rng(7);
  for (int trial = 0; trial < 200; ++trial) {
    const int32_t layers = 1 + rng() % 8, ranks = 1 << (rng() % 3), heads = ranks * (1 + rng() % 4);
    std::vector<int32_t> load(layers * heads);
    for (auto& x : load) x = rng() % 1000;
    auto b = BalancedAssignment(load, layers, heads, ranks);
    ASSERT_TRUE(b.ok());
    ExpectPermutation(*b);
    const double ib = Imbalance(RankLoads(*b, load));
    const double ic = Imbalance(RankLoads(*ContiguousAssignment(layers, heads, ranks), load));
    // LPT is not optimal, but it never loses to identity by more than one head's share.
    int64_t sum = 0;
    for (int32_t x : load) sum += x;
    EXPECT_LE(ib, ic + 1000.0 * ranks / std::max<int64_t>(1, sum) + 1e-9)
        << "trial " << trial;
  }
}

TEST(RankAssignmentTest, RejectsBadSizes) {
  std::vector<int32_t> load(8, 1);
  EXPECT_FALSE(BalancedAssignment(load, 2, 4, 3).ok());
  EXPECT_FALSE(BalancedAssignment(load, 3, 4, 2).ok());
}

// The report the tensor-parallel issue asks for: KV imbalance across ranks for the published
// score files, contiguous vs balanced placement (kv_head granularity, 8 KV heads, prompt 32k).
TEST(RankAssignmentTest, PublishedScoreFilesBalanceWithinTwoPercent) {
  const char* files[] = {"Meta-Llama-3-8B-Instruct_retrieval_reasoning_heads.json",
                         "Mistral-7B-Instruct-v0.2_retrieval_reasoning_heads.json"};
  std::printf("%-58s %6s %4s %12s %12s\n", "score file", "B", "TP", "contiguous", "balanced");
  for (const char* file : files) {
    auto scores = LoadHeadScores(SharedDataDir() + "/headkv_scores/" + file);
    ASSERT_TRUE(scores.ok()) << scores.status();
    for (int32_t budget : {128, 1024}) {
      KvPolicy policy;
      policy.name = KvPolicyName::kHeadKv;
      policy.budget = budget;
      policy.scores = std::make_shared<const HeadScores>(GroupByKvHead(*scores, 8));
      auto plan = HeadBudgetPlanner::Plan(policy, 32, 8);
      ASSERT_TRUE(plan.ok()) << plan.status();
      const std::vector<int32_t> kept = plan->KeptTokens(32768);
      for (int32_t tp : {2, 4, 8}) {
        const double ic = Imbalance(RankLoads(*ContiguousAssignment(32, 8, tp), kept));
        const double ib = Imbalance(RankLoads(*BalancedAssignment(kept, 32, 8, tp), kept));
        std::printf("%-58s %6d %4d %12.3f %12.3f\n", file, budget, tp, ic, ib);
        EXPECT_LE(ib, ic + 1e-9);
        if (tp < 8) EXPECT_LT(ib, 1.02) << file << " B=" << budget << " TP=" << tp;
      }
    }
  }
}

}  // namespace
}  // namespace hkv
