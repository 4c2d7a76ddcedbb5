#include "headkv/head_budget_planner.h"

#include <cmath>
#include <cstdlib>
#include <memory>
#include <numeric>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "common/paths.h"
#include "headkv/head_scores.h"
#include "headkv/kv_policy.h"

namespace hkv {
namespace {

using ::testing::ElementsAre;
using ::testing::ElementsAreArray;
using ::testing::HasSubstr;

std::shared_ptr<const HeadScores> Scores(const std::string& json) {
  auto s = ParseHeadScores(json, "golden.json");
  EXPECT_TRUE(s.ok()) << s.status();
  return std::make_shared<const HeadScores>(*std::move(s));
}

KvPolicy Policy(KvPolicyName name, int32_t budget) {
  KvPolicy p;
  p.name = name;
  p.budget = budget;
  return p;
}

TEST(PyFloorDivTest, MatchesPythonFloatFloorDivision) {
  EXPECT_EQ(PyFloorDiv(101, 1.01), 99.0);  // floor(101 / 1.01) would give 100
  EXPECT_EQ(PyFloorDiv(202, 1.01), 199.0);
  EXPECT_EQ(PyFloorDiv(10, 1.01), 9.0);
  EXPECT_EQ(PyFloorDiv(56, 1.01), 55.0);
  EXPECT_EQ(PyFloorDiv(10, 2.0), 5.0);
  EXPECT_EQ(PyFloorDiv(7, 2.0), 3.0);
}

TEST(HeadBudgetPlannerTest, HeadKvGoldenWithHalfToEven) {
  // Means 1, 3, 2, 2 -> importance 0.125, 0.375, 0.25, 0.25. B = 18, w = 8: b = 10,
  // 10 // 1.01 = 9, floor = 1, pool = 9 * 2 * 2 = 36. Caps: 0.125*36+1 = 5.5 -> 6,
  // 0.375*36+1 = 14.5 -> 14, 0.25*36+1 = 10.
  KvPolicy p = Policy(KvPolicyName::kHeadKv, 18);
  p.granularity = Granularity::kQueryHead;
  p.scores = Scores(R"({"0-0": [0, 2], "0-1": [3], "1-0": [1, 3], "1-1": [2, 2, 2]})");
  auto plan = HeadBudgetPlanner::Plan(p, 2, 2);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_THAT(plan->capacity, ElementsAre(6, 14, 10, 10));
  EXPECT_FALSE(plan->adaptive);
  EXPECT_EQ(PlanToJson(*plan),
            R"({"num_layers": 2, "num_heads": 2, "capacity": [[6, 14], [10, 10]]})");
  // n = 20: heads keep min(cap, 12) + 8.
  EXPECT_THAT(plan->KeptTokens(20), ElementsAre(14, 20, 18, 18));
  EXPECT_THAT(plan->KeptTokens(18), ElementsAre(18, 18, 18, 18));  // n <= B: no compression
  EXPECT_TRUE(plan->compresses(19));
  EXPECT_FALSE(plan->compresses(18));
  EXPECT_EQ(plan->MaxKeptPerLayer(20), 36);
  EXPECT_EQ(plan->MaxBlocksPerLayer(0, 20, 16), 1 + 2);
}

TEST(HeadBudgetPlannerTest, HeadKvBetaUsesPythonFloorDivision) {
  // b = 101: 101 // 1.01 = 99, floor = 2, pool = 99 * 2 = 198, caps 0.5 * 198 + 2 = 101.
  KvPolicy p = Policy(KvPolicyName::kHeadKv, 109);
  p.granularity = Granularity::kQueryHead;
  p.scores = Scores(R"({"0-0": [1], "0-1": [1]})");
  auto plan = HeadBudgetPlanner::Plan(p, 1, 2);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_THAT(plan->capacity, ElementsAre(101, 101));
  // A larger beta pools less: b = 10, beta = 2 -> q = 5, floor 5, pool 10; importance 0.25 and
  // 0.75 give 2.5 + 5 = 7.5 -> 8 and 7.5 + 5 = 12.5 -> 12.
  p.budget = 18;
  p.beta = 2.0;
  p.scores = Scores(R"({"0-0": [1], "0-1": [3]})");
  plan = HeadBudgetPlanner::Plan(p, 1, 2);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_THAT(plan->capacity, ElementsAre(8, 12));
}

TEST(HeadBudgetPlannerTest, HeadKvKvHeadGranularityGroupsScores) {
  // Query-head importance 0.1 0.2 0.3 0.4 -> kv heads 0.3, 0.7. b = 10, beta = 2: q = 5,
  // floor 5, pool 5 * 1 * 2 = 10 -> caps 8 and 12.
  KvPolicy p = Policy(KvPolicyName::kHeadKv, 18);
  p.beta = 2.0;
  p.scores = Scores(R"({"0-0": [1], "0-1": [2], "0-2": [3], "0-3": [4]})");
  auto plan = HeadBudgetPlanner::Plan(p, 1, 2);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_THAT(plan->capacity, ElementsAre(8, 12));
  // The same scores at query-head granularity: pool 5 * 4 = 20 -> 7, 9, 11, 13.
  p.granularity = Granularity::kQueryHead;
  plan = HeadBudgetPlanner::Plan(p, 1, 4);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_THAT(plan->capacity, ElementsAre(7, 9, 11, 13));
}

TEST(HeadBudgetPlannerTest, HeadKvRejectsScoresOfTheWrongShape) {
  KvPolicy p = Policy(KvPolicyName::kHeadKv, 18);
  p.scores = Scores(R"({"0-0": [1], "0-1": [2], "0-2": [3], "0-3": [4]})");
  for (auto [layers, heads, g] : {std::tuple{2, 2, Granularity::kKvHead},
                                  std::tuple{1, 3, Granularity::kKvHead},
                                  std::tuple{1, 2, Granularity::kQueryHead}}) {
    p.granularity = g;
    auto plan = HeadBudgetPlanner::Plan(p, layers, heads);
    EXPECT_EQ(plan.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(plan.status().message()), HasSubstr("1 layers x 4 heads"));
    EXPECT_THAT(std::string(plan.status().message()),
                HasSubstr(std::to_string(layers) + " layers x " + std::to_string(heads)));
  }
}

TEST(HeadBudgetPlannerTest, SnapKvAndFull) {
  auto plan = HeadBudgetPlanner::Plan(Policy(KvPolicyName::kSnapKv, 24), 2, 3);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_THAT(plan->capacity, ElementsAre(16, 16, 16, 16, 16, 16));
  EXPECT_THAT(plan->KeptTokens(30), ElementsAre(24, 24, 24, 24, 24, 24));
  EXPECT_THAT(plan->KeptTokens(10), ElementsAre(10, 10, 10, 10, 10, 10));
  EXPECT_EQ(plan->MaxKeptPerLayer(100), 72);
  EXPECT_EQ(plan->MaxBlocksPerLayer(1, 100, 16), 3 * 2);

  auto full = HeadBudgetPlanner::Plan(Policy(KvPolicyName::kFull, 0), 2, 3);
  ASSERT_TRUE(full.ok()) << full.status();
  EXPECT_FALSE(full->compresses(100000));
  EXPECT_THAT(full->KeptTokens(500), ElementsAre(500, 500, 500, 500, 500, 500));
  EXPECT_EQ(PlanToJson(*full), R"({"num_layers": 2, "num_heads": 3, "capacity": []})");
}

TEST(HeadBudgetPlannerTest, PyramidKvGolden) {
  // b = 100: min = 5, max = 195, step = 190 // 4 = 47.
  auto plan = HeadBudgetPlanner::Plan(Policy(KvPolicyName::kPyramidKv, 108), 5, 1);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_THAT(plan->capacity, ElementsAre(195, 148, 101, 54, 7));
  // b = 8: min = 0, max = 16, step = 4.
  plan = HeadBudgetPlanner::Plan(Policy(KvPolicyName::kPyramidKv, 16), 5, 2);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_THAT(plan->capacity, ElementsAre(16, 16, 12, 12, 8, 8, 4, 4, 0, 0));
  EXPECT_THAT(plan->KeptTokens(20), ElementsAre(20, 20, 20, 20, 16, 16, 12, 12, 8, 8));
  // One layer: no slope.
  plan = HeadBudgetPlanner::Plan(Policy(KvPolicyName::kPyramidKv, 40), 1, 2);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_THAT(plan->capacity, ElementsAre(32, 32));
}

TEST(HeadBudgetPlannerTest, AdaKvIsAdaptive) {
  auto plan = HeadBudgetPlanner::Plan(Policy(KvPolicyName::kAdaKv, 24), 3, 4);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_TRUE(plan->adaptive);
  EXPECT_TRUE(plan->capacity.empty());
  EXPECT_THAT(plan->layer_budget, ElementsAre(64, 64, 64));
  EXPECT_EQ(plan->MaxKeptPerLayer(1000), 64 + 32);
  EXPECT_EQ(plan->MaxKeptPerLayer(20), 4 * 12 + 32);  // fewer scores than the budget
  EXPECT_EQ(plan->MaxKeptPerLayer(24), 96);            // n <= B: everything
  EXPECT_THAT(plan->KeptTokens(24), ElementsAreArray(std::vector<int32_t>(12, 24)));
  // 96 tokens over 4 heads, each rounding up by at most 15: (96 + 60) / 16 = 9 blocks.
  EXPECT_EQ(plan->MaxBlocksPerLayer(0, 1000, 16), 9);
  EXPECT_EQ(plan->MaxBlocksPerLayer(0, 24, 16), 8);
  EXPECT_EQ(PlanToJson(*plan),
            R"({"num_layers": 3, "num_heads": 4, "capacity": [], "layer_budget": [64, 64, 64]})");
}

TEST(HeadBudgetPlannerTest, ValidatesPolicies) {
  struct Case {
    KvPolicy policy;
    const char* message;
  };
  KvPolicy small = Policy(KvPolicyName::kSnapKv, 8);
  KvPolicy beta = Policy(KvPolicyName::kHeadKv, 64);
  beta.beta = 1.0;
  beta.scores = Scores(R"({"0-0": [1]})");
  KvPolicy no_scores = Policy(KvPolicyName::kHeadKv, 64);
  KvPolicy kernel = Policy(KvPolicyName::kSnapKv, 64);
  kernel.pool_kernel = 6;
  KvPolicy window = Policy(KvPolicyName::kFull, 0);
  window.window = 0;
  KvPolicy alpha = Policy(KvPolicyName::kAdaKv, 64);
  alpha.ada_alpha = 1.5f;
  for (const Case& c : {Case{small, "must be >= window + 1 = 9, got 8"},
                        Case{beta, "beta must be a finite number > 1"},
                        Case{no_scores, "needs a head score file"},
                        Case{kernel, "pool kernel must be odd"},
                        Case{window, "window must be >= 1"},
                        Case{alpha, "alpha must be in [0, 1]"}}) {
    const absl::Status st = ValidatePolicy(c.policy);
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << c.message;
    EXPECT_THAT(std::string(st.message()), HasSubstr(c.message));
    EXPECT_EQ(HeadBudgetPlanner::Plan(c.policy, 1, 1).status().code(),
              absl::StatusCode::kInvalidArgument);
  }
  EXPECT_TRUE(ValidatePolicy(Policy(KvPolicyName::kFull, 0)).ok());
  EXPECT_TRUE(ValidatePolicy(Policy(KvPolicyName::kSnapKv, 9)).ok());
  EXPECT_EQ(HeadBudgetPlanner::Plan(Policy(KvPolicyName::kSnapKv, 64), 0, 8).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(KvPolicyTest, NamesRoundTrip) {
  for (KvPolicyName n : {KvPolicyName::kFull, KvPolicyName::kSnapKv, KvPolicyName::kPyramidKv,
                         KvPolicyName::kAdaKv, KvPolicyName::kHeadKv}) {
    auto parsed = ParsePolicyName(PolicyNameString(n));
    ASSERT_TRUE(parsed.ok());
    EXPECT_EQ(*parsed, n);
  }
  EXPECT_EQ(*ParsePolicyName("headkv"), KvPolicyName::kHeadKv);
  EXPECT_THAT(std::string(ParsePolicyName("HeadKV").status().message()), HasSubstr("\"HeadKV\""));
  EXPECT_EQ(*ParseGranularity("query_head"), Granularity::kQueryHead);
  EXPECT_EQ(*ParseGranularity("kv_head"), Granularity::kKvHead);
  EXPECT_FALSE(ParseGranularity("kvhead").ok());
}

// Invariants on the published score files: every cap >= floor, and the caps sum to L*H*b
// within rounding (at most half a token per head).
TEST(HeadBudgetPlannerTest, InvariantsOnRealScoreFiles) {
  for (const char* file : {"Meta-Llama-3-8B-Instruct_retrieval_heads.json",
                           "Meta-Llama-3-8B-Instruct_retrieval_reasoning_heads.json",
                           "Mistral-7B-Instruct-v0.2_retrieval_heads.json",
                           "Mistral-7B-Instruct-v0.2_retrieval_reasoning_heads.json"}) {
    auto loaded = LoadHeadScores(SharedDataDir() + "/headkv_scores/" + file);
    ASSERT_TRUE(loaded.ok()) << loaded.status();
    auto scores = std::make_shared<const HeadScores>(*std::move(loaded));
    for (Granularity g : {Granularity::kQueryHead, Granularity::kKvHead}) {
      const int32_t heads = g == Granularity::kQueryHead ? 32 : 8;
      for (int32_t budget : {16, 32, 64, 128, 1024}) {
        for (double beta : {1.01, 1.005, 1.2, 2.0}) {
          KvPolicy p = Policy(KvPolicyName::kHeadKv, budget);
          p.beta = beta;
          p.granularity = g;
          p.scores = scores;
          auto plan = HeadBudgetPlanner::Plan(p, 32, heads);
          ASSERT_TRUE(plan.ok()) << plan.status();
          const int32_t b = budget - p.window;
          const int32_t floor_cap = b - static_cast<int32_t>(PyFloorDiv(b, beta));
          ASSERT_EQ(plan->capacity.size(), size_t(32 * heads));
          int64_t sum = 0;
          for (int32_t c : plan->capacity) {
            EXPECT_GE(c, floor_cap) << file << " B=" << budget;
            sum += c;
          }
          EXPECT_LE(std::abs(sum - int64_t{32} * heads * b), 32 * heads / 2)
              << file << " B=" << budget << " beta=" << beta;
        }
      }
    }
  }
}

// Budgets near 2^31: every policy either plans exactly (64-bit arithmetic) or refuses with
// INVALID_ARGUMENT; none wraps to a small or negative budget.
constexpr int32_t kNearMax = 2147483646;        // 2^31 - 2
constexpr int32_t kPastHalf = (1 << 30) + 100;  // 2 * (B - w) passes 2^31

TEST(HeadBudgetPlannerOverflowTest, SnapKvNearTwoToThe31) {
  auto plan = HeadBudgetPlanner::Plan(Policy(KvPolicyName::kSnapKv, kNearMax), 2, 3);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_THAT(plan->capacity, ElementsAreArray(std::vector<int32_t>(6, kNearMax - 8)));
  // A prompt of 2^31 - 1 tokens compresses to B per head; three heads pass 2^31.
  const int32_t n = kNearMax + 1;
  EXPECT_THAT(plan->KeptTokens(n), ElementsAreArray(std::vector<int32_t>(6, kNearMax)));
  EXPECT_EQ(plan->LayerKeptBound(0, n), int64_t{3} * kNearMax);
  EXPECT_EQ(plan->MaxKeptPerLayer(n), int64_t{3} * kNearMax);
  EXPECT_EQ(plan->MaxBlocksPerLayer(0, n, 16), int64_t{3} * ((int64_t{kNearMax} + 15) / 16));
  // Uncompressed: H * ceil(n / bs) blocks, n + bs - 1 computed without overflow.
  auto full = HeadBudgetPlanner::Plan(Policy(KvPolicyName::kFull, 0), 2, 3);
  ASSERT_TRUE(full.ok()) << full.status();
  EXPECT_EQ(full->MaxBlocksPerLayer(0, n, 16), int64_t{3} * ((int64_t{n} + 15) / 16));
  EXPECT_EQ(full->LayerKeptBound(0, n), int64_t{3} * n);
}

TEST(HeadBudgetPlannerOverflowTest, PyramidKvPastTwoToThe30PlansExactly) {
  // b = 2^30 + 92: min = b / 20 = 53687095, max = 2b - min = 2093796737 (2b alone passes
  // 2^31), step = (max - min) / 4 = 510027410.
  auto plan = HeadBudgetPlanner::Plan(Policy(KvPolicyName::kPyramidKv, kPastHalf), 5, 1);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_THAT(plan->capacity, ElementsAre(2093796737, 1583769327, 1073741917, 563714507, 53687097));
}

TEST(HeadBudgetPlannerOverflowTest, PyramidKvNearTwoToThe31IsRefused) {
  auto plan = HeadBudgetPlanner::Plan(Policy(KvPolicyName::kPyramidKv, kNearMax), 5, 4);
  EXPECT_EQ(plan.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(plan.status().message()), HasSubstr("too large for pyramidkv"));
  // One layer has no slope: every head keeps b.
  plan = HeadBudgetPlanner::Plan(Policy(KvPolicyName::kPyramidKv, kNearMax), 1, 2);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_THAT(plan->capacity, ElementsAre(kNearMax - 8, kNearMax - 8));
}

TEST(HeadBudgetPlannerOverflowTest, AdaKvLayerBudgetNeverWraps) {
  // 4 heads x (2^30 + 92) = 2^32 + 368 used to wrap to a layer budget of 368.
  for (int32_t heads : {2, 4}) {
    for (int32_t budget : {kPastHalf, kNearMax}) {
      auto plan = HeadBudgetPlanner::Plan(Policy(KvPolicyName::kAdaKv, budget), 3, heads);
      EXPECT_EQ(plan.status().code(), absl::StatusCode::kInvalidArgument)
          << heads << " heads, B=" << budget;
      EXPECT_THAT(std::string(plan.status().message()), HasSubstr("too large for adakv"));
    }
  }
  auto plan = HeadBudgetPlanner::Plan(Policy(KvPolicyName::kAdaKv, kPastHalf), 3, 1);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_THAT(plan->layer_budget, ElementsAre(kPastHalf - 8, kPastHalf - 8, kPastHalf - 8));
  // The bound of a compressed layer: min(layer budget, H (n - w)) + H w, in 64 bits.
  EXPECT_EQ(plan->LayerKeptBound(0, kNearMax), kPastHalf);
  EXPECT_EQ(plan->MaxBlocksPerLayer(0, kNearMax, 16), (int64_t{kPastHalf} + 15) / 16);
}

TEST(HeadBudgetPlannerOverflowTest, HeadKvNearTwoToThe31) {
  KvPolicy p = Policy(KvPolicyName::kHeadKv, kPastHalf);
  p.granularity = Granularity::kQueryHead;
  p.scores = Scores(R"({"0-0": [1], "0-1": [3]})");  // importance 0.25, 0.75
  auto plan = HeadBudgetPlanner::Plan(p, 1, 2);
  ASSERT_TRUE(plan.ok()) << plan.status();
  // Caps sum to H * b within rounding, each at least the floor b - b // beta.
  const int64_t b = kPastHalf - 8;
  const int64_t floor_cap = b - static_cast<int64_t>(PyFloorDiv(b, p.beta));
  ASSERT_EQ(plan->capacity.size(), 2u);
  EXPECT_GT(plan->capacity[1], plan->capacity[0]);
  EXPECT_GE(plan->capacity[0], floor_cap);
  EXPECT_LE(std::abs(int64_t{plan->capacity[0]} + plan->capacity[1] - 2 * b), 1);
  // Near 2^31 the important head's cap (~1.5 b) cannot be held: refused, not wrapped.
  p.budget = kNearMax;
  plan = HeadBudgetPlanner::Plan(p, 1, 2);
  EXPECT_EQ(plan.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(plan.status().message()), HasSubstr("too large for headkv"));
}

}  // namespace
}  // namespace hkv
