#include "headkv/head_scores.h"

#include <cstdio>
#include <fstream>
#include <numeric>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "common/paths.h"

namespace hkv {
namespace {

using ::testing::DoubleNear;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

absl::Status ParseError(const std::string& text) {
  return ParseHeadScores(text, "test.json").status();
}

TEST(HeadScoresTest, ParsesMeansAndNormalises) {
  auto s = ParseHeadScores(R"({"0-0": [0, 2], "0-1": [3], "1-0": [1, 3], "1-1": [2, 2, 2]})",
                           "t.json");
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->num_layers, 2);
  EXPECT_EQ(s->num_heads, 2);
  EXPECT_THAT(s->importance, ElementsAre(0.125, 0.375, 0.25, 0.25));
  EXPECT_EQ(s->at(0, 1), 0.375);
  EXPECT_EQ(s->path, "t.json");
}

TEST(HeadScoresTest, KeyOrderDoesNotMatter) {
  auto s = ParseHeadScores(R"({"1-1": [4], "0-1": [2], "1-0": [3], "0-0": [1]})", "t.json");
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_THAT(s->importance, ElementsAre(0.1, 0.2, 0.3, 0.4));
}

TEST(HeadScoresTest, RejectsMalformedFiles) {
  struct Case {
    const char* text;
    const char* message;
  };
  for (const Case& c : {
           Case{"{\"0-0\": [1]", "not valid JSON"},
           Case{"[1, 2]", "expected a non-empty object"},
           Case{"{}", "expected a non-empty object"},
           Case{R"({"0-0": [1], "a-1": [1]})", "key \"a-1\""},
           Case{R"({"0_0": [1]})", "key \"0_0\""},
           Case{R"({"0-0-0": [1]})", "key \"0-0-0\""},
           Case{R"({"0--1": [1]})", "key \"0--1\""},
           Case{R"({"0-0": [1, "x"]})", "\"0-0\"[1] is not a number"},
           Case{R"({"0-0": [true]})", "is not a number"},
           Case{R"({"0-0": [1, -0.5]})", "scores must be finite and >= 0"},
           Case{R"({"0-0": []})", "must be a non-empty list"},
           Case{R"({"0-0": 3})", "must be a non-empty list"},
           Case{R"({"0-0": [1], "1-1": [1], "1-0": [1]})", "missing key \"0-1\""},
           Case{R"({"0-0": [1], "00-0": [2]})", "appears more than once"},
           Case{R"({"0-0": [0, 0], "0-1": [0]})", "every head's score is zero"},
       }) {
    const absl::Status st = ParseError(c.text);
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << c.text;
    EXPECT_THAT(std::string(st.message()), HasSubstr(c.message)) << c.text;
    EXPECT_THAT(std::string(st.message()), HasSubstr("test.json")) << c.text;
  }
}

TEST(HeadScoresTest, MissingFileIsNotFound) {
  auto s = LoadHeadScores("/nonexistent/dir/scores.json");
  EXPECT_EQ(s.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(s.status().message()), HasSubstr("/nonexistent/dir/scores.json"));
}

TEST(HeadScoresTest, LoadsFromDisk) {
  const std::string path = ::testing::TempDir() + "/hkv_head_scores_test.json";
  {
    std::ofstream f(path);
    f << R"({"0-0": [1], "0-1": [3]})";
  }
  auto s = LoadHeadScores(path);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_THAT(s->importance, ElementsAre(0.25, 0.75));
  EXPECT_EQ(s->path, path);
  std::remove(path.c_str());
}

TEST(HeadScoresTest, CheckShapeNamesBothShapes) {
  auto s = ParseHeadScores(R"({"0-0": [1], "0-1": [3]})", "t.json");
  ASSERT_TRUE(s.ok());
  EXPECT_TRUE(CheckShape(*s, 1, 2).ok());
  const absl::Status st = CheckShape(*s, 5, 8);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(st.message()), HasSubstr("1 layers x 2 heads"));
  EXPECT_THAT(std::string(st.message()), HasSubstr("5 layers x 8 query heads"));
}

TEST(HeadScoresTest, GroupByKvHeadSumsEachGroup) {
  HeadScores s;
  s.num_layers = 2;
  s.num_heads = 4;
  s.importance = {0.1, 0.2, 0.05, 0.15, 0.0, 0.3, 0.1, 0.1};
  const HeadScores g = GroupByKvHead(s, 2);
  EXPECT_EQ(g.num_layers, 2);
  EXPECT_EQ(g.num_heads, 2);
  EXPECT_THAT(g.importance, ElementsAre(DoubleNear(0.3, 1e-15), DoubleNear(0.2, 1e-15),
                                        DoubleNear(0.3, 1e-15), DoubleNear(0.2, 1e-15)));
  const HeadScores same = GroupByKvHead(s, 4);
  EXPECT_EQ(same.importance, s.importance);
}

class RealScoreFileTest : public ::testing::TestWithParam<const char*> {};

TEST_P(RealScoreFileTest, LoadsAs32x32) {
  const std::string path = SharedDataDir() + "/headkv_scores/" + GetParam();
  auto s = LoadHeadScores(path);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->num_layers, 32);
  EXPECT_EQ(s->num_heads, 32);
  ASSERT_EQ(s->importance.size(), 1024u);
  EXPECT_NEAR(std::accumulate(s->importance.begin(), s->importance.end(), 0.0), 1.0, 1e-12);
  for (double v : s->importance) EXPECT_GE(v, 0.0);
  EXPECT_TRUE(CheckShape(*s, 32, 32).ok());
  EXPECT_FALSE(CheckShape(*s, 5, 8).ok());
  const HeadScores g = GroupByKvHead(*s, 8);
  EXPECT_EQ(g.num_heads, 8);
  EXPECT_NEAR(std::accumulate(g.importance.begin(), g.importance.end(), 0.0), 1.0, 1e-12);
  EXPECT_NEAR(g.at(3, 1), s->at(3, 4) + s->at(3, 5) + s->at(3, 6) + s->at(3, 7), 1e-15);
}

INSTANTIATE_TEST_SUITE_P(
    SharedFiles, RealScoreFileTest,
    ::testing::Values("Meta-Llama-3-8B-Instruct_retrieval_heads.json",
                      "Meta-Llama-3-8B-Instruct_retrieval_reasoning_heads.json",
                      "Mistral-7B-Instruct-v0.2_retrieval_heads.json",
                      "Mistral-7B-Instruct-v0.2_retrieval_reasoning_heads.json"));

}  // namespace
}  // namespace hkv
