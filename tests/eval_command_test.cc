// `hkv eval` end to end on the trained needle fixture (tests/data/needle): its JSON parsed back,
// full-KV answers equal to what `hkv generate` gives for the same prompts, compressed policies
// keeping less KV, and clear errors for bad input. 1k-token prompts only (CPU time).

#include <sys/wait.h>

#include <cstdio>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/paths.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "headkv/answer_metrics.h"
#include "nlohmann/json.hpp"

namespace hkv {
namespace {

using ::testing::HasSubstr;
using Json = nlohmann::json;

std::string Dir() { return SourceDir() + "/tests/data/needle"; }

std::map<std::string, Json> EvalRecords() {
  std::ifstream in(Dir() + "/eval.jsonl");
  std::map<std::string, Json> out;
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    Json j = Json::parse(line);
    const std::string id = j["id"].get<std::string>();
    out[id] = std::move(j);
  }
  return out;
}

// Writes the fixture's tasks `ids` (text prompts only, so eval tokenizes them) to a file.
std::string WriteTasks(const std::vector<std::string>& ids, const std::string& name) {
  const auto records = EvalRecords();
  const std::string path = absl::StrCat(::testing::TempDir(), "/", name);
  std::ofstream out(path);
  for (const std::string& id : ids) {
    const Json& r = records.at(id);
    Json task = {{"id", id},
                 {"prompt", r["prompt"]},
                 {"answer", r["answer"]},
                 {"family", r["family"]},
                 {"length", r["length"]}};
    out << task.dump() << "\n";
  }
  return path;
}

// A valid score file for the fixture's 6 layers x 8 query heads: distinct scores per head.
std::string WriteScores() {
  const std::string path = ::testing::TempDir() + "/needle_scores.json";
  Json j = Json::object();
  for (int l = 0; l < 6; ++l) {
    for (int h = 0; h < 8; ++h) j[absl::StrCat(l, "-", h)] = {1.0 + ((l * 8 + h) * 7) % 11};
  }
  std::ofstream(path) << j.dump();
  return path;
}

struct HkvRun {
  int status = -1;
  std::string out;
};

HkvRun RunHkv(const std::string& args, bool with_stderr = false) {
  const std::string command =
      absl::StrCat(HKV_BINARY, " ", args, with_stderr ? " 2>&1" : " 2>/dev/null");
  FILE* pipe = popen(command.c_str(), "r");
  HkvRun run;
  char buffer[4096];
  size_t n;
  while ((n = fread(buffer, 1, sizeof(buffer), pipe)) > 0) run.out.append(buffer, n);
  const int raw = pclose(pipe);
  run.status = WIFEXITED(raw) ? WEXITSTATUS(raw) : -1;
  return run;
}

std::string Engine() { return absl::StrCat("--model ", Dir(), " --device cpu --num-threads 2"); }

// Parses eval's JSON lines: records, then the summary as the last line.
std::vector<Json> Lines(const std::string& out) {
  std::vector<Json> lines;
  for (absl::string_view line : absl::StrSplit(out, '\n', absl::SkipEmpty())) {
    lines.push_back(Json::parse(line));
  }
  return lines;
}

// The answer as eval scores it: the generated text up to the first '.' (--answer-stop .).
std::string Answer(const std::string& text) { return text.substr(0, text.find('.')); }

TEST(EvalCommandTest, FullKvAnswersEqualGenerate) {
  const std::vector<std::string> ids = {"multi-1024-00"};
  const HkvRun eval =
      RunHkv(absl::StrCat("eval ", Engine(), " --tasks ", WriteTasks(ids, "full.jsonl"),
                          " --policies full --answer-stop . --json"));
  ASSERT_EQ(eval.status, 0) << eval.out;
  const std::vector<Json> lines = Lines(eval.out);
  ASSERT_EQ(lines.size(), ids.size() + 1);
  const auto records = EvalRecords();
  int exact = 0;
  for (size_t i = 0; i < ids.size(); ++i) {
    const Json& r = lines[i];
    EXPECT_EQ(r["id"], ids[i]);
    EXPECT_EQ(r["policy"], "full");
    std::string prompt_ids;
    for (const Json& t : records.at(ids[i])["prompt_ids"]) {
      absl::StrAppend(&prompt_ids, prompt_ids.empty() ? "" : ",", t.dump());
    }
    const HkvRun gen = RunHkv(absl::StrCat("generate ", Engine(), " --prompt-ids ", prompt_ids,
                                           " --max-tokens 32 --temperature 0 --json"));
    ASSERT_EQ(gen.status, 0) << gen.out;
    const Json g = Json::parse(gen.out);
    const std::string answer = Answer(g["text"].get<std::string>());
    EXPECT_EQ(r["response"], answer) << ids[i];
    const std::string reference = records.at(ids[i])["answer"].get<std::string>();
    EXPECT_EQ(r["exact_match"].get<bool>(), ExactMatch(answer, reference)) << ids[i];
    EXPECT_DOUBLE_EQ(r["f1"].get<double>(), QaF1(answer, reference)) << ids[i];
    EXPECT_EQ(r["kv_tokens_kept"], g["kv_tokens_kept"]) << ids[i];
    EXPECT_EQ(r["kv_tokens_full"], g["kv_tokens_full"]) << ids[i];
    exact += ExactMatch(answer, reference) ? 1 : 0;
  }
  const Json& summary = lines.back()["summary"];
  ASSERT_EQ(summary.size(), 1u);
  EXPECT_DOUBLE_EQ(summary[0]["all"]["exact_match"].get<double>(),
                   static_cast<double>(exact) / ids.size());
  EXPECT_EQ(summary[0]["all"]["kv_kept_share"].get<double>(), 1.0);
  ASSERT_EQ(summary[0]["groups"].size(), 1u);
  EXPECT_EQ(summary[0]["groups"][0]["family"], "multi");
}

TEST(EvalCommandTest, JsonHasARecordPerPolicyAndBudgetThenTheSummary) {
  const HkvRun eval = RunHkv(
      absl::StrCat("eval ", Engine(), " --tasks ", WriteTasks({"single-1024-01"}, "policies.jsonl"),
                   " --policies full,snapkv,headkv --budgets 32 --head-scores ", WriteScores(),
                   " --answer-stop . --json"));
  ASSERT_EQ(eval.status, 0) << eval.out;
  const std::vector<Json> lines = Lines(eval.out);
  ASSERT_EQ(lines.size(), 4u);
  const std::vector<std::pair<std::string, int>> want = {
      {"full", 0}, {"snapkv", 32}, {"headkv", 32}};
  int64_t full_tokens = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    const Json& r = lines[i];
    for (const char* key : {"id", "family", "length", "policy", "budget", "response", "exact_match",
                            "f1", "kv_tokens_kept", "kv_tokens_full"}) {
      EXPECT_TRUE(r.contains(key)) << key;
    }
    EXPECT_EQ(r["id"], "single-1024-01");
    EXPECT_EQ(r["policy"], want[i].first);
    EXPECT_EQ(r["budget"], want[i].second);
    EXPECT_FALSE(r.contains("error"));
    const int64_t kept = r["kv_tokens_kept"].get<int64_t>();
    const int64_t full = r["kv_tokens_full"].get<int64_t>();
    if (i == 0) {
      EXPECT_EQ(kept, full);
      full_tokens = full;
    } else {
      // 6 layers x 2 KV heads x (32 prompt tokens + the generated ones), far below full.
      EXPECT_EQ(full, full_tokens);
      EXPECT_LT(kept, full / 4);
      EXPECT_GE(kept, 12 * 32);
    }
  }
  const Json& last = lines.back();
  EXPECT_EQ(last["tasks"], 1);
  EXPECT_EQ(last["device"], "cpu");
  ASSERT_EQ(last["summary"].size(), 3u);
  for (size_t i = 0; i < want.size(); ++i) {
    const Json& row = last["summary"][i];
    EXPECT_EQ(row["policy"], want[i].first);
    EXPECT_EQ(row["all"]["n"], 1);
    EXPECT_EQ(row["all"]["exact_match"].get<double>(), lines[i]["exact_match"].get<bool>() ? 1 : 0);
    EXPECT_EQ(row["all"]["kv_tokens_kept"], lines[i]["kv_tokens_kept"]);
    ASSERT_EQ(row["groups"].size(), 1u);
    EXPECT_EQ(row["groups"][0]["family"], "single");
    EXPECT_EQ(row["groups"][0]["length"], 1024);
  }
}

TEST(EvalCommandTest, BadInputIsAClearError) {
  const std::string tasks = WriteTasks({"single-1024-00"}, "one.jsonl");
  HkvRun run = RunHkv(absl::StrCat("eval ", Engine(), " --tasks ", tasks, " --policies headkv"),
                      /*with_stderr=*/true);
  EXPECT_EQ(run.status, 1);
  EXPECT_THAT(run.out, HasSubstr("headkv policy needs --head-scores"));
  const std::string bad = ::testing::TempDir() + "/bad.jsonl";
  std::ofstream(bad) << "\n{\"id\": \"a\", \"answer\": \"x\"}\n";
  run = RunHkv(absl::StrCat("eval ", Engine(), " --tasks ", bad), /*with_stderr=*/true);
  EXPECT_EQ(run.status, 1);
  EXPECT_THAT(run.out, HasSubstr("line 2: \"prompt\" is missing"));
  // A task longer than the context fails alone, as a record with its error; the exit status 1.
  const std::string long_task = ::testing::TempDir() + "/long.jsonl";
  Json too_long = {{"id", "long"}, {"prompt_ids", std::vector<int>(5000, 7)}, {"answer", "x"}};
  std::ofstream(long_task) << too_long.dump() << "\n";
  run = RunHkv(absl::StrCat("eval ", Engine(), " --tasks ", long_task, " --policies full --json"));
  EXPECT_EQ(run.status, 1);
  const std::vector<Json> lines = Lines(run.out);
  ASSERT_EQ(lines.size(), 2u) << run.out;
  EXPECT_EQ(lines[0]["id"], "long");
  EXPECT_THAT(lines[0]["error"].get<std::string>(), HasSubstr("5000"));
  EXPECT_EQ(lines[1]["summary"][0]["all"]["errors"], 1);
  run = RunHkv(absl::StrCat("eval ", Engine(), " --tasks ", tasks, " --budgets 8,x"), true);
  EXPECT_EQ(run.status, 1);
  EXPECT_THAT(run.out, HasSubstr("--budgets: 'x' is not an integer"));
  run =
      RunHkv(absl::StrCat("eval ", Engine(), " --tasks ", tasks, " --policies snapkv,bogus"), true);
  EXPECT_EQ(run.status, 1);
  EXPECT_THAT(run.out, HasSubstr("bogus"));
  run = RunHkv(
      absl::StrCat("eval ", Engine(), " --tasks ", tasks, " --policies snapkv --budgets 100000"),
      true);
  EXPECT_EQ(run.status, 1);
  EXPECT_THAT(run.out, HasSubstr("100000"));
}

}  // namespace
}  // namespace hkv
