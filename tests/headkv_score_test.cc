// `hkv headkv-score` end to end on the trained needle fixture (tests/data/needle), as a user
// runs it: the binary, a probe file (or the grid from a haystack and needles), the score file
// it writes read back by the score reader and used by `hkv headkv-plan`; and its errors.

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

#include "common/paths.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "headkv/head_scores.h"
#include "nlohmann/json.hpp"

namespace hkv {
namespace {

using ::testing::HasSubstr;

std::string Needle() { return SourceDir() + "/tests/data/needle"; }

struct HkvRun {
  int status = -1;
  std::string out;  // stdout, then stderr
};

HkvRun Hkv(const std::string& args) {
  const std::string command = std::string(HKV_BINARY) + " " + args + " 2>&1";
  FILE* pipe = popen(command.c_str(), "r");
  HkvRun r;
  char buffer[4096];
  size_t n;
  while ((n = fread(buffer, 1, sizeof(buffer), pipe)) > 0) r.out.append(buffer, n);
  const int raw = pclose(pipe);
  r.status = WIFEXITED(raw) ? WEXITSTATUS(raw) : -1;
  return r;
}

class HeadkvScoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/hkv_headkv_score_XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override { std::system(("rm -rf " + dir_).c_str()); }
  std::string Write(const std::string& name, const std::string& text) {
    const std::string path = dir_ + "/" + name;
    std::ofstream(path) << text;
    return path;
  }
  // Lines of the fixture's probes_score.jsonl with these ids.
  std::string FixtureLines(const std::vector<std::string>& ids) {
    std::ifstream in(Needle() + "/probes_score.jsonl");
    std::string line, out;
    while (std::getline(in, line)) {
      if (line.empty()) continue;
      const std::string id = nlohmann::json::parse(line)["id"].get<std::string>();
      if (std::find(ids.begin(), ids.end(), id) != ids.end()) out += line + "\n";
    }
    return out;
  }
  // The last line of `text` (the --json object after any log lines).
  static nlohmann::json LastJson(const std::string& text) {
    std::string t = text;
    while (!t.empty() && t.back() == '\n') t.pop_back();
    return nlohmann::json::parse(t.substr(t.rfind('\n') + 1));
  }
  std::string dir_;
};

TEST_F(HeadkvScoreTest, ScoresFixtureProbesIntoAFileThatHeadkvPlanReads) {
  const std::string probes =
      Write("probes.jsonl", FixtureLines({"probe-single-1024-0"}));  // ~1k tokens: 1 probe.
  const std::string out = dir_ + "/scores.json";
  const HkvRun run = Hkv("headkv-score --model " + Needle() + " --device cpu --probes " + probes +
                         " --method r2 --out " + out + " --json");
  ASSERT_EQ(run.status, 0) << run.out;
  const nlohmann::json j = LastJson(run.out);
  EXPECT_EQ(j["probes_run"], 1);
  EXPECT_EQ(j["probes_accepted"], 1);  // Answered right (the fixture's greedy_text).
  EXPECT_GT(j["seconds"].get<double>(), 0);
  ASSERT_EQ(j["heads"].size(), 6u * 8u);
  ASSERT_EQ(j["probes"].size(), 1u);
  EXPECT_EQ(j["probes"][0]["response"], " 141168");

  auto scores = LoadHeadScores(out);
  ASSERT_TRUE(scores.ok()) << scores.status();
  EXPECT_EQ(scores->num_layers, 6);
  EXPECT_EQ(scores->num_heads, 8);
  // The published format: every head's list holds one score per accepted probe, and their
  // means are what --json printed.
  std::ifstream in(out);
  const nlohmann::json file = nlohmann::json::parse(in);
  ASSERT_EQ(file.size(), 48u);
  EXPECT_EQ(file.begin().key(), "0-0");
  double most = 0;
  for (const auto& [key, list] : file.items()) {
    ASSERT_EQ(list.size(), 1u) << key;
    const double mean = list[0].get<double>();
    EXPECT_NEAR(j["heads"][key].get<double>(), mean, 1e-12) << key;
    most = std::max(most, mean);
  }
  EXPECT_GT(most, 0.1);  // Some head of the trained model attends to the needle.

  const HkvRun plan = Hkv("headkv-plan --scores " + out + " --budget 64 --kv-heads 2 --json");
  EXPECT_EQ(plan.status, 0) << plan.out;
}

TEST_F(HeadkvScoreTest, BuildsTheGridFromAHaystackAndNeedles) {
  // Filler from a fixture prompt (its needle and question dropped).
  std::ifstream in(Needle() + "/probes_score.jsonl");
  std::string line;
  std::getline(in, line);
  const nlohmann::json probe = nlohmann::json::parse(line);
  const std::string prompt = probe["prompt"].get<std::string>();
  const std::string haystack = prompt.substr(36, prompt.rfind(" Question:") - 36);
  const std::string h = Write("haystack.txt", haystack);
  const std::string n =
      Write("needles.jsonl", R"({"needle": "The secret code of Zoe is 275316.", )"
                             R"("question": "Question: What is the secret code of Zoe? Answer:", )"
                             R"("answer": "275316"})"
                             "\n");
  const std::string out = dir_ + "/grid.json";
  const HkvRun run =
      Hkv("headkv-score --model " + Needle() + " --device cpu --haystack " + h + " --needles " + n +
          " --context-lengths 160 --depths 0,1 --out " + out + " --json");
  ASSERT_EQ(run.status, 0) << run.out;
  const nlohmann::json j = LastJson(run.out);
  EXPECT_EQ(j["probes_run"], 2);
  ASSERT_EQ(j["probes"].size(), 2u);
  EXPECT_EQ(j["probes"][0]["id"], "needle0-grid-160-0");
  EXPECT_GE(j["probes_accepted"].get<int>(), 1);
  EXPECT_TRUE(LoadHeadScores(out).ok());
}

TEST_F(HeadkvScoreTest, BadInputIsAClearErrorWithNonZeroExit) {
  const std::string m = "headkv-score --model " + Needle() + " --device cpu ";
  const std::string out = " --out " + dir_ + "/x.json";
  const std::string good = Write("good.jsonl", FixtureLines({"probe-single-1024-0"}));
  struct Case {
    std::string args, message;
  };
  const std::vector<Case> cases = {
      {"--probes " + dir_ + "/missing.jsonl" + out, "missing.jsonl"},
      {"--probes " + Write("bad.jsonl", "{\"prompt\": 3}\n") + out, "line 1"},
      {"--probes " + good, "--out FILE is required"},
      {"--probes " + good + " --method x" + out, "--method x"},
      {"--probes " + good + " --haystack " + good + out, "not both"},
      {"--haystack " + good + out, "--needles"},
      {"--probes " + good + " --max-new-tokens 100000" + out, "--max-new-tokens"},
  };
  for (const Case& c : cases) {
    const HkvRun r = Hkv(m + c.args);
    EXPECT_EQ(r.status, 1) << c.args << "\n" << r.out;
    EXPECT_THAT(r.out, HasSubstr("hkv headkv-score: ")) << c.args;
    EXPECT_THAT(r.out, HasSubstr(c.message)) << c.args << "\n" << r.out;
  }
  // A device that cannot serve the model: stories260K's head_dim 8 has no CUDA kernels, and
  // without a GPU there is no CUDA device at all; either way a message and exit 1.
  const HkvRun cuda = Hkv("headkv-score --device cuda --probes " + good + out);
  EXPECT_EQ(cuda.status, 1) << cuda.out;
  EXPECT_THAT(cuda.out, HasSubstr("hkv headkv-score: "));
}

}  // namespace
}  // namespace hkv
