#include "headkv/head_importance.h"

#include <cmath>
#include <random>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "headkv/head_scores.h"

namespace hkv {
namespace {

using ::testing::DoubleNear;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

// Straightforward reference of the R2 formula: pick the top-N one at a time by scanning.
double ReferenceR2(const std::vector<float>& row, AnswerSpan span) {
  std::vector<bool> taken(row.size(), false);
  double sum = 0.0;
  for (int32_t k = 0; k < span.size() && k < static_cast<int32_t>(row.size()); ++k) {
    int32_t best = -1;
    for (int32_t p = 0; p < static_cast<int32_t>(row.size()); ++p) {
      if (!taken[p] && (best < 0 || row[p] > row[best])) best = p;
    }
    taken[best] = true;
    if (best >= span.begin && best < span.end) sum += row[best];
  }
  return sum / span.size();
}

TEST(R2ProbeScorerTest, MatchesNestedLoopReferenceOnRandomRows) {
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> weight(0.0f, 1.0f);
  std::uniform_int_distribution<int> coarse(0, 3);  // Few distinct values: many ties.
  const int32_t layers = 3, heads = 4;
  for (int trial = 0; trial < 50; ++trial) {
    const int32_t len = 1 + trial % 17;
    const int32_t begin = static_cast<int32_t>(rng() % len);
    const AnswerSpan span{begin, begin + 1 + static_cast<int32_t>(rng() % 6)};
    R2ProbeScorer scorer(layers, heads, span);
    std::vector<double> expected(layers * heads, 0.0);
    for (int step = 0; step < 3; ++step) {
      for (int32_t l = 0; l < layers; ++l) {
        std::vector<float> rows(heads * len);
        for (float& w : rows) w = trial % 2 ? coarse(rng) / 4.0f : weight(rng);
        ASSERT_TRUE(scorer.AddStep(l, rows).ok());
        for (int32_t h = 0; h < heads; ++h) {
          std::vector<float> row(rows.begin() + h * len, rows.begin() + (h + 1) * len);
          expected[l * heads + h] += ReferenceR2(row, span);
        }
      }
    }
    for (size_t i = 0; i < expected.size(); ++i) {
      EXPECT_THAT(scorer.scores()[i], DoubleNear(expected[i], 1e-9)) << trial << " " << i;
    }
  }
}

TEST(R2ProbeScorerTest, HandCases) {
  // Span at the start, N = 2: top-2 of {0.5, 0.1, 0.3, 0.1} are positions 0 and 2; only 0 is in
  // [0, 2): 0.5 / 2.
  R2ProbeScorer start(1, 1, {0, 2});
  ASSERT_TRUE(start.AddStep(0, std::vector<float>{0.5f, 0.1f, 0.3f, 0.1f}).ok());
  EXPECT_THAT(start.scores(), ElementsAre(DoubleNear(0.25, 1e-7)));
  // Span at the end [2, 4): top-2 are 3 (0.4) and then 0 or 2 tied at 0.3 -> lower position 0.
  R2ProbeScorer end(1, 1, {2, 4});
  ASSERT_TRUE(end.AddStep(0, std::vector<float>{0.3f, 0.0f, 0.3f, 0.4f}).ok());
  EXPECT_THAT(end.scores(), ElementsAre(DoubleNear(0.2, 1e-7)));
  // Tie at the cut, lower position inside the span: [1, 2), N = 1, tie between 1 and 3.
  R2ProbeScorer tie(1, 1, {1, 2});
  ASSERT_TRUE(tie.AddStep(0, std::vector<float>{0.1f, 0.45f, 0.0f, 0.45f}).ok());
  EXPECT_THAT(tie.scores(), ElementsAre(DoubleNear(0.45, 1e-7)));
  // N = 5 larger than the 3-token prompt: every position is taken, all inside, / 5.
  R2ProbeScorer big(1, 1, {0, 5});
  ASSERT_TRUE(big.AddStep(0, std::vector<float>{0.2f, 0.3f, 0.5f}).ok());
  EXPECT_THAT(big.scores(), ElementsAre(DoubleNear(0.2, 1e-7)));
}

TEST(R2ProbeScorerTest, KeepsHeadsAndLayersApart) {
  R2ProbeScorer s(2, 2, {1, 2});
  ASSERT_TRUE(s.AddStep(1, std::vector<float>{0.9f, 0.1f, 0.2f, 0.8f}).ok());
  ASSERT_TRUE(s.AddStep(1, std::vector<float>{0.0f, 1.0f, 0.0f, 1.0f}).ok());
  EXPECT_THAT(s.scores(), ElementsAre(0.0, 0.0, DoubleNear(1.0, 1e-7), DoubleNear(1.8, 1e-7)));
}

TEST(R2ProbeScorerTest, RejectsBadShapes) {
  R2ProbeScorer s(2, 2, {0, 1});
  EXPECT_THAT(s.AddStep(2, std::vector<float>{1, 1}).message(), HasSubstr("layer 2"));
  EXPECT_THAT(s.AddStep(-1, std::vector<float>{1, 1}).message(), HasSubstr("layer -1"));
  EXPECT_THAT(s.AddStep(0, std::vector<float>{1, 1, 1}).message(), HasSubstr("3 attention"));
  EXPECT_FALSE(s.AddStep(0, std::vector<float>{}).ok());
  EXPECT_THAT(s.AddStep(0, std::vector<float>{1, std::nanf("")}).message(),
              HasSubstr("weight 1 is not finite"));
  EXPECT_THAT(s.scores(), ElementsAre(0.0, 0.0, 0.0, 0.0));
}

TEST(RProbeScorerTest, CountsTopOneCopies) {
  // Prompt ids 10 11 12 13, span [1, 3) (N = 2).
  RProbeScorer s(1, 3, {1, 3}, {10, 11, 12, 13});
  // Head 0 attends 1 (id 11), head 1 attends 2 (id 12), head 2 attends 3 (outside).
  const std::vector<float> rows = {0.1f, 0.7f, 0.1f, 0.1f,  //
                                   0.1f, 0.1f, 0.7f, 0.1f,  //
                                   0.1f, 0.1f, 0.1f, 0.7f};
  ASSERT_TRUE(s.AddStep(0, rows, 11).ok());
  EXPECT_THAT(s.scores(), ElementsAre(0.5, 0.0, 0.0));
  ASSERT_TRUE(s.AddStep(0, rows, 12).ok());
  EXPECT_THAT(s.scores(), ElementsAre(0.5, 0.5, 0.0));
  ASSERT_TRUE(s.AddStep(0, rows, 13).ok());  // Head 2 copies, but from outside the span.
  EXPECT_THAT(s.scores(), ElementsAre(0.5, 0.5, 0.0));
  // Tie between 0 and 1 goes to position 0 (outside the span).
  RProbeScorer tie(1, 1, {1, 3}, {10, 11, 12, 13});
  ASSERT_TRUE(tie.AddStep(0, std::vector<float>{0.4f, 0.4f, 0.1f, 0.1f}, 11).ok());
  EXPECT_THAT(tie.scores(), ElementsAre(0.0));
  EXPECT_THAT(tie.AddStep(0, std::vector<float>{1, 0, 0}, 11).message(),
              HasSubstr("prompt has 4 tokens"));
}

TEST(HeadScoreTableTest, MeansAndJsonRoundTrip) {
  HeadScoreTable t(2, 11);  // 11 heads: "0-10" must follow "0-9", not "0-1".
  EXPECT_EQ(t.ToJson().status().code(), absl::StatusCode::kFailedPrecondition);
  std::vector<double> a(22), b(22);
  for (int i = 0; i < 22; ++i) {
    a[i] = i;
    b[i] = i % 3 == 0 ? 0.125 : i + 2.0;
  }
  ASSERT_TRUE(t.AddProbe(a).ok());
  ASSERT_TRUE(t.AddProbe(b).ok());
  EXPECT_EQ(t.num_probes(), 2);
  const std::vector<double> means = t.Means();
  EXPECT_EQ(means[0], 0.0625);
  EXPECT_EQ(means[1], 2.0);
  auto json = t.ToJson();
  ASSERT_TRUE(json.ok()) << json.status();
  EXPECT_EQ(json->rfind("{\"0-0\":[0.0,0.125],\"0-1\":[1.0,3.0],", 0), 0u) << *json;
  EXPECT_LT(json->find("\"0-9\""), json->find("\"0-10\""));
  EXPECT_LT(json->find("\"0-10\""), json->find("\"1-0\""));
  auto parsed = ParseHeadScores(*json, "round_trip.json");
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->num_layers, 2);
  EXPECT_EQ(parsed->num_heads, 11);
  double total = 0.0;
  for (double m : means) total += m;
  for (int i = 0; i < 22; ++i) {
    EXPECT_THAT(parsed->importance[i], DoubleNear(means[i] / total, 1e-15));
  }
}

TEST(HeadScoreTableTest, RejectsBadProbes) {
  HeadScoreTable t(1, 2);
  EXPECT_THAT(t.AddProbe(std::vector<double>{1.0}).message(), HasSubstr("expected 2"));
  EXPECT_THAT(t.AddProbe(std::vector<double>{1.0, -1.0}).message(), HasSubstr("finite"));
  EXPECT_FALSE(t.AddProbe(std::vector<double>{1.0, std::nan("")}).ok());
  EXPECT_EQ(t.num_probes(), 0);
  EXPECT_THAT(t.Means(), ElementsAre(0.0, 0.0));
}

// The top-N form a worker returns gives AddStep's result: random rows (with ties), each row's
// top min(N, len) positions by falling weight, ties to the lower position.
TEST(ProbeTopNTest, AddTopNEqualsAddStepOnTheSameRows) {
  std::mt19937 rng(3);
  std::uniform_int_distribution<int> coarse(0, 5);
  const int32_t layers = 2, heads = 3;
  for (int trial = 0; trial < 40; ++trial) {
    const int32_t len = 2 + trial % 13;
    const int32_t begin = static_cast<int32_t>(rng() % (len - 1));
    const AnswerSpan span{begin, begin + 1 + static_cast<int32_t>(rng() % (len - begin))};
    std::vector<int32_t> ids(len);
    for (int32_t& id : ids) id = static_cast<int32_t>(rng() % 3);
    R2ProbeScorer full(layers, heads, span), top(layers, heads, span);
    RProbeScorer r_full(layers, heads, span, ids), r_top(layers, heads, span, ids);
    for (int32_t l = 0; l < layers; ++l) {
      std::vector<float> rows(heads * len);
      for (float& w : rows) w = coarse(rng) / 5.0f;
      const int32_t k = std::min(span.size(), len);
      std::vector<int32_t> pos(heads * k);
      std::vector<float> weights(heads * k);
      for (int32_t h = 0; h < heads; ++h) {
        std::vector<int32_t> order(len);
        for (int32_t p = 0; p < len; ++p) order[p] = p;
        std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) {
          return rows[h * len + a] > rows[h * len + b];
        });
        for (int32_t i = 0; i < k; ++i) {
          pos[h * k + i] = order[i];
          weights[h * k + i] = rows[h * len + order[i]];
        }
      }
      const int32_t token = static_cast<int32_t>(rng() % 3);
      ASSERT_TRUE(full.AddStep(l, rows).ok());
      ASSERT_TRUE(top.AddTopN(l, pos, weights).ok());
      ASSERT_TRUE(r_full.AddStep(l, rows, token).ok());
      ASSERT_TRUE(r_top.AddTopN(l, pos, weights, token).ok());
    }
    for (size_t i = 0; i < full.scores().size(); ++i) {
      EXPECT_DOUBLE_EQ(top.scores()[i], full.scores()[i]) << trial;
      EXPECT_DOUBLE_EQ(r_top.scores()[i], r_full.scores()[i]) << trial;
    }
  }
}

TEST(ProbeTopNTest, RejectsBadProbes) {
  R2ProbeScorer s(1, 2, {0, 2});
  EXPECT_EQ(s.AddTopN(0, std::vector<int32_t>{0, 1, 0}, std::vector<float>{1, 1, 1}).code(),
            absl::StatusCode::kInvalidArgument);  // Not 2 x k.
  EXPECT_EQ(s.AddTopN(0, std::vector<int32_t>{0, 1}, std::vector<float>{1}).code(),
            absl::StatusCode::kInvalidArgument);  // Mismatched arrays.
  EXPECT_EQ(s.AddTopN(1, std::vector<int32_t>{0, 1}, std::vector<float>{1, 1}).code(),
            absl::StatusCode::kInvalidArgument);  // No layer 1.
  EXPECT_EQ(s.AddTopN(0, std::vector<int32_t>{0, 1}, std::vector<float>{NAN, 1}).code(),
            absl::StatusCode::kInvalidArgument);
  RProbeScorer r(1, 1, {0, 1}, {5, 6});
  EXPECT_THAT(r.AddTopN(0, std::vector<int32_t>{7}, std::vector<float>{1}, 5).message(),
              HasSubstr("outside the 2 prompt tokens"));
  EXPECT_THAT(s.scores(), ElementsAre(0.0, 0.0));
}

}  // namespace
}  // namespace hkv
