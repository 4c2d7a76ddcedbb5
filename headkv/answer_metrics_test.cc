#include "headkv/answer_metrics.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace hkv {
namespace {

using ::testing::DoubleNear;
using ::testing::ElementsAre;

TEST(AnswerMetricsTest, NormalisesLikeSquad) {
  EXPECT_EQ(NormalizeAnswer("  The Quick, brown FOX!  "), "quick brown fox");
  EXPECT_EQ(NormalizeAnswer("An apple a day"), "apple day");
  EXPECT_EQ(NormalizeAnswer("theory and anthem"), "theory and anthem");  // Whole words only.
  EXPECT_EQ(NormalizeAnswer("the-end"), "theend");  // Punctuation goes before articles.
  EXPECT_EQ(NormalizeAnswer("...!?"), "");
  EXPECT_THAT(AnswerTokens("Code:\t141168.\n"), ElementsAre("code", "141168"));
}

TEST(AnswerMetricsTest, QaF1HandComputed) {
  EXPECT_EQ(QaF1("141168", "141168"), 1.0);
  EXPECT_EQ(QaF1(" 141168.", "141168"), 1.0);
  EXPECT_EQ(QaF1("", ""), 1.0);
  EXPECT_EQ(QaF1("the", "a"), 1.0);  // Both normalise to empty.
  EXPECT_EQ(QaF1("", "x"), 0.0);
  EXPECT_EQ(QaF1("x", ""), 0.0);
  EXPECT_EQ(QaF1("cat", "dog"), 0.0);
  // pred {code is 141168}, ref {141168}: P = 1/3, R = 1, F1 = 2 * (1/3) / (4/3) = 0.5.
  EXPECT_THAT(QaF1("the code is 141168", "141168"), DoubleNear(0.5, 1e-12));
  // pred {x b b}, ref {b b c d}: shared 2 (clipped), P = 2/3, R = 1/2, F1 = 4/7.
  EXPECT_THAT(QaF1("x b b", "b b c d"), DoubleNear(4.0 / 7, 1e-12));
  // Repeats are clipped: pred {b b b}, ref {b}: shared 1, P = 1/3, R = 1, F1 = 0.5.
  EXPECT_THAT(QaF1("b b b", "b"), DoubleNear(0.5, 1e-12));
}

TEST(AnswerMetricsTest, Rouge1RecallHandComputed) {
  EXPECT_EQ(Rouge1Recall("", ""), 1.0);
  EXPECT_EQ(Rouge1Recall("x", ""), 0.0);
  EXPECT_EQ(Rouge1Recall("", "x"), 0.0);
  // Extra prediction words cost nothing: ref {eat sandwich}, both found.
  EXPECT_EQ(Rouge1Recall("I would eat a sandwich in the park", "eat a sandwich"), 1.0);
  // ref {b b c d}, pred {b c}: overlap 2 / 4.
  EXPECT_EQ(Rouge1Recall("b c", "b b c d"), 0.5);
  // ref {b}, pred {b b}: overlap clipped to 1.
  EXPECT_EQ(Rouge1Recall("b b", "b"), 1.0);
}

TEST(AnswerMetricsTest, ExactMatch) {
  EXPECT_TRUE(ExactMatch("The Answer.", "answer"));
  EXPECT_TRUE(ExactMatch("", "the"));
  EXPECT_FALSE(ExactMatch("answers", "answer"));
}

}  // namespace
}  // namespace hkv
