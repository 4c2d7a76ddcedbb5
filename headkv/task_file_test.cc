#include "headkv/task_file.h"

#include <map>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/paths.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace hkv {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

TEST(TaskFileTest, ParsesTextIdsAndAnswerLists) {
  auto tasks = ParseTaskFile(
      R"({"id": "a", "prompt": "Q: code? Answer:", "answer": "42", "family": "single", "length": 1024})"
      "\n\n"
      R"({"id": "b", "prompt_ids": [1, 5, 7], "answer": ["x", "y z"], "extra": true})"
      "\r\n"
      R"({"id": "c", "prompt": "text", "prompt_ids": [3], "answer": ""})"
      "\n");
  ASSERT_TRUE(tasks.ok()) << tasks.status();
  ASSERT_EQ(tasks->size(), 3u);
  const EvalTask& a = (*tasks)[0];
  EXPECT_EQ(a.id, "a");
  EXPECT_EQ(a.prompt, "Q: code? Answer:");
  EXPECT_TRUE(a.prompt_ids.empty());
  EXPECT_THAT(a.answers, ElementsAre("42"));
  EXPECT_EQ(a.family, "single");
  EXPECT_EQ(a.length, 1024);
  const EvalTask& b = (*tasks)[1];
  EXPECT_THAT(b.prompt_ids, ElementsAre(1, 5, 7));
  EXPECT_THAT(b.answers, ElementsAre("x", "y z"));
  EXPECT_EQ(b.family, "all");
  EXPECT_EQ(b.length, 0);
  EXPECT_EQ((*tasks)[2].prompt, "text");
  EXPECT_THAT((*tasks)[2].prompt_ids, ElementsAre(3));
}

TEST(TaskFileTest, ReportsTheBadLine) {
  const std::string good = R"({"id": "a", "prompt": "p", "answer": "x"})";
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"{not json", "not a JSON object"},
      {"[1, 2]", "not a JSON object"},
      {R"({"prompt": "p", "answer": "x"})", "\"id\" is missing"},
      {R"({"id": 7, "prompt": "p", "answer": "x"})", "\"id\" must be a string"},
      {R"({"id": "", "prompt": "p", "answer": "x"})", "\"id\" must hold 1 to"},
      {R"({"id": "b", "answer": "x"})", "\"prompt\" is missing"},
      {R"({"id": "b", "prompt": "", "answer": "x"})", "\"prompt\" is empty"},
      {R"({"id": "b", "prompt_ids": [], "answer": "x"})", "non-empty array"},
      {R"({"id": "b", "prompt_ids": [1, -2], "answer": "x"})", "integers in [0, 2^31)"},
      {R"({"id": "b", "prompt_ids": [1, 2.5], "answer": "x"})", "integers in [0, 2^31)"},
      {R"({"id": "b", "prompt": "p"})", "\"answer\" is missing"},
      {R"({"id": "b", "prompt": "p", "answer": []})", "array of 1 to"},
      {R"({"id": "b", "prompt": "p", "answer": ["x", 3]})", "strings only"},
      {R"({"id": "b", "prompt": "p", "answer": "x", "family": 3})", "\"family\" must be"},
      {R"({"id": "b", "prompt": "p", "answer": "x", "length": -1})", "\"length\" must be"},
      {R"({"id": "b", "prompt": "p", "answer": "x", "length": "4k"})", "\"length\" must be"},
      {good, "duplicate id \"a\""},
  };
  for (const auto& [line, want] : cases) {
    auto tasks = ParseTaskFile(absl::StrCat(good, "\n\n", line, "\n"));
    ASSERT_FALSE(tasks.ok()) << line;
    EXPECT_EQ(tasks.status().code(), absl::StatusCode::kInvalidArgument) << line;
    EXPECT_THAT(tasks.status().message(), HasSubstr("line 3: ")) << line;
    EXPECT_THAT(tasks.status().message(), HasSubstr(want)) << line;
  }
}

TEST(TaskFileTest, BoundsEverySize) {
  TaskFileLimits limits;
  limits.max_line_bytes = 64;
  limits.max_tasks = 2;
  limits.max_prompt_ids = 3;
  limits.max_answers = 2;
  limits.max_name_bytes = 4;
  const std::string ok = R"({"id": "a", "prompt": "p", "answer": "x"})";
  EXPECT_TRUE(ParseTaskFile(ok, limits).ok());
  const std::vector<std::pair<std::string, std::string>> cases = {
      {absl::StrCat(R"({"id": "a", "prompt": ")", std::string(64, 'p'), R"(", "answer": "x"})"),
       "over the limit of 64"},
      {R"({"id": "a", "prompt_ids": [1, 2, 3, 4], "answer": "x"})", "more than 3 ids"},
      {R"({"id": "a", "prompt": "p", "answer": ["x", "y", "z"]})", "1 to 2 strings"},
      {R"({"id": "abcde", "prompt": "p", "answer": "x"})", "1 to 4 bytes"},
      {absl::StrCat(ok, "\n", R"({"id": "b", "prompt": "p", "answer": "x"})", "\n",
                    R"({"id": "c", "prompt": "p", "answer": "x"})"),
       "line 3: more than 2 tasks"},
  };
  for (const auto& [text, want] : cases) {
    auto tasks = ParseTaskFile(text, limits);
    ASSERT_FALSE(tasks.ok()) << text;
    EXPECT_EQ(tasks.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(tasks.status().message(), HasSubstr(want)) << text;
  }
  auto empty = ParseTaskFile("\n  \n");
  ASSERT_FALSE(empty.ok());
  EXPECT_THAT(empty.status().message(), HasSubstr("no tasks"));
}

TEST(TaskFileTest, LoadsTheNeedleFixture) {
  auto tasks = LoadTaskFile(SourceDir() + "/tests/data/needle/eval.jsonl");
  ASSERT_TRUE(tasks.ok()) << tasks.status();
  std::map<std::string, int> per_family;
  for (const EvalTask& t : *tasks) {
    ++per_family[t.family];
    EXPECT_FALSE(t.prompt.empty()) << t.id;
    EXPECT_FALSE(t.prompt_ids.empty()) << t.id;
    EXPECT_EQ(t.answers.size(), 1u) << t.id;
    EXPECT_GT(t.length, 0) << t.id;
  }
  EXPECT_EQ(per_family.size(), 3u);
  EXPECT_EQ(tasks->size(), 84u);
  auto missing = LoadTaskFile(SourceDir() + "/tests/data/needle/no_such_file.jsonl");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace hkv
