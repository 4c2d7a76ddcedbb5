// The trained needle fixture (tests/data/needle, made by tests/data/make_needle_model.py):
// hkv's tokenizer gives the ids that the Python tokenizer recorded in eval.jsonl, and
// `hkv generate` (CPU, greedy, full KV) reproduces the recorded greedy answers.

#include <cstdio>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "common/paths.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tokenizer/hf_tokenizer.h"

namespace hkv {
namespace {

std::string Dir() { return SourceDir() + "/tests/data/needle"; }

std::map<std::string, nlohmann::json> EvalRecords() {
  std::ifstream in(Dir() + "/eval.jsonl");
  std::map<std::string, nlohmann::json> out;
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    nlohmann::json j = nlohmann::json::parse(line);
    const std::string id = j["id"].get<std::string>();
    out[id] = std::move(j);
  }
  return out;
}

std::string RunHkv(const std::string& args, int* status) {
  const std::string command = std::string(HKV_BINARY) + " " + args + " 2>/dev/null";
  FILE* pipe = popen(command.c_str(), "r");
  std::string out;
  char buffer[4096];
  size_t n;
  while ((n = fread(buffer, 1, sizeof(buffer), pipe)) > 0) out.append(buffer, n);
  const int raw = pclose(pipe);
  *status = WIFEXITED(raw) ? WEXITSTATUS(raw) : -1;
  return out;
}

TEST(NeedleModelTest, TokenizerGivesTheRecordedIds) {
  auto tok = LoadHfTokenizer(Dir());
  ASSERT_TRUE(tok.ok()) << tok.status();
  const auto records = EvalRecords();
  ASSERT_GE(records.size(), 84u);
  EXPECT_EQ((*tok)->bos_id(), 1479);
  EXPECT_EQ((*tok)->eos_ids(), std::vector<TokenId>{1480});
  int i = 0;
  for (const auto& [id, r] : records) {
    if (i++ % 2 != 0) continue;  // Half of them (every family and length): time.
    const std::vector<TokenId> want = r["prompt_ids"].get<std::vector<TokenId>>();
    const std::string prompt = r["prompt"].get<std::string>();
    EXPECT_EQ((*tok)->Encode(prompt, /*add_bos=*/true), want) << id;
    EXPECT_EQ((*tok)->Decode(absl::MakeConstSpan(want).subspan(1)), prompt) << id;
  }
}

// Two held-out 1k-token prompts with wide greedy margins (4k prompts take minutes on 2 cores).
TEST(NeedleModelTest, GenerateReproducesTheRecordedGreedyAnswers) {
  const auto records = EvalRecords();
  for (const char* id : {"single-1024-00", "multi-1024-00"}) {
    ASSERT_TRUE(records.count(id)) << id;
    const nlohmann::json& r = records.at(id);
    ASSERT_TRUE(r["correct"].get<bool>()) << id;
    ASSERT_GT(r["margin"].get<double>(), 1.0) << id;
    std::string ids;
    for (const auto& t : r["prompt_ids"]) ids += (ids.empty() ? "" : ",") + t.dump();
    int status = 0;
    const std::string out =
        RunHkv("generate --model " + Dir() + " --device cpu --num-threads 2 --prompt-ids " + ids +
                   " --max-tokens 16 --temperature 0 --json",
               &status);
    ASSERT_EQ(status, 0) << id << ": " << out;
    nlohmann::json j = nlohmann::json::parse(out);
    EXPECT_EQ(j["output_ids"], r["greedy_ids"]) << id;
    const std::string text = j["text"].get<std::string>();
    EXPECT_EQ(text, r["greedy_text"].get<std::string>()) << id;
    EXPECT_EQ(text.substr(1, text.find('.') - 1), r["answer"].get<std::string>()) << id;
  }
}

}  // namespace
}  // namespace hkv
