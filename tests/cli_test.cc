// The hkv command line: `generate --json` golden output, `generate --chat` and
// `headkv-plan --json`.

#include <stdlib.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <string>

#include "common/paths.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace hkv {
namespace {

// Runs `hkv args...` and returns its stdout; `status` gets the exit code.
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

TEST(CliTest, GenerateJsonFromBosPrintsTheGoldenIds) {
  int status = 0;
  const std::string out =
      RunHkv("generate --prompt= --max-tokens 40 --temperature 0 --json", &status);
  ASSERT_EQ(status, 0) << out;
  nlohmann::json j = nlohmann::json::parse(out);
  EXPECT_EQ(j["prompt_ids"], nlohmann::json::array({1}));
  EXPECT_EQ(
      j["output_ids"],
      nlohmann::json::array({403, 407, 261, 378, 432, 383, 286, 261, 376, 298, 315, 421, 395, 317,
                             426, 338, 401, 396, 267, 337, 410, 408, 419, 292, 411, 322, 265, 282,
                             295, 433, 426, 385, 328, 432, 358, 394, 261, 370, 432, 352}));
  EXPECT_THAT(j["text"].get<std::string>(),
              ::testing::StartsWith("Once upon a time, there was a little girl named Lily"));
  EXPECT_GT(j["decode_tokens_per_s"].get<double>(), 0);
  EXPECT_GE(j["prefill_ms"].get<double>(), 0);
}

// `generate --chat` renders --prompt as one user message through --chat-template (a
// llama2.c checkpoint has no template of its own); a template that does not parse fails.
TEST(CliTest, GenerateChatThroughATemplateFile) {
  char dir[] = "/tmp/cli_test_chat_XXXXXX";
  ASSERT_NE(mkdtemp(dir), nullptr);
  const std::string good = std::string(dir) + "/good.jinja";
  const std::string bad = std::string(dir) + "/bad.jinja";
  std::ofstream(good) << "{% for m in messages %}{{ m.content | trim }}{% endfor %}"
                         "{% if add_generation_prompt %} there was{% endif %}\n";
  std::ofstream(bad) << "{% for m in %}";
  int status = 0;
  std::string out = RunHkv("generate --chat --chat-template " + good +
                               " --prompt '  Once upon a time ' --max-tokens 4 --json",
                           &status);
  ASSERT_EQ(status, 0) << out;
  nlohmann::json chat = nlohmann::json::parse(out);
  // The same text as a plain prompt (which gets BOS; the template writes none).
  out = RunHkv("generate --prompt 'Once upon a time there was' --max-tokens 4 --json", &status);
  ASSERT_EQ(status, 0) << out;
  nlohmann::json plain = nlohmann::json::parse(out);
  nlohmann::json without_bos = plain["prompt_ids"];
  without_bos.erase(without_bos.begin());
  EXPECT_EQ(chat["prompt_ids"], without_bos);
  RunHkv("generate --chat --chat-template " + bad + " --prompt x --max-tokens 1", &status);
  EXPECT_EQ(status, 1);
  RunHkv("generate --chat --prompt x --max-tokens 1", &status);  // No template at all.
  EXPECT_EQ(status, 1);
  unlink(good.c_str());
  unlink(bad.c_str());
  rmdir(dir);
}

TEST(CliTest, GenerateWithPromptIdsAndCompression) {
  int status = 0;
  std::string ids = "1";
  for (int i = 0; i < 99; ++i) ids += "," + std::to_string(300 + i % 50);
  const std::string out = RunHkv(
      "generate --prompt-ids " + ids + " --max-tokens 8 --kv-policy snapkv --kv-budget 16 --json",
      &status);
  ASSERT_EQ(status, 0) << out;
  nlohmann::json j = nlohmann::json::parse(out);
  EXPECT_EQ(j["prompt_ids"].size(), 100u);
  EXPECT_EQ(j["output_ids"].size(), 8u);
  // 5 layers x 4 KV heads: 16 prompt tokens + 7 decoded tokens cached per row.
  EXPECT_EQ(j["kv_tokens_kept"].get<int64_t>(), 20 * (16 + 7));
  EXPECT_EQ(j["kv_tokens_full"].get<int64_t>(), 20 * (100 + 7));
}

TEST(CliTest, GenerateFromAHuggingFaceDirectoryWithCompression) {
  int status = 0;
  std::string ids = "1";
  for (int i = 0; i < 59; ++i) ids += "," + std::to_string(3 + (i * 37) % 250);
  for (const char* policy : {"full", "snapkv", "pyramidkv", "adakv"}) {
    const std::string out =
        RunHkv("generate --model " + SourceDir() + "/tests/data/hf/llama --prompt-ids " + ids +
                   " --max-tokens 6 --ignore-eos --kv-policy " + policy + " --kv-budget 16 --json",
               &status);
    ASSERT_EQ(status, 0) << policy << ": " << out;
    nlohmann::json j = nlohmann::json::parse(out);
    EXPECT_EQ(j["output_ids"].size(), 6u) << policy;
    // 2 layers x 2 KV heads.
    EXPECT_EQ(j["kv_tokens_full"].get<int64_t>(), 4 * (60 + 5));
    if (std::string(policy) != "full") {
      EXPECT_LT(j["kv_tokens_kept"].get<int64_t>(), j["kv_tokens_full"].get<int64_t>()) << policy;
    }
  }
  // Without a tokenizer.json, text prompts are refused with a clear message.
  RunHkv("generate --model " + SourceDir() + "/tests/data/hf/qwen2 --prompt hello", &status);
  EXPECT_NE(status, 0);
}

TEST(CliTest, GenerateRejectsBadInput) {
  int status = 0;
  RunHkv("generate --prompt-ids 1,x", &status);
  EXPECT_NE(status, 0);
  RunHkv("generate --model /nonexistent.bin", &status);
  EXPECT_NE(status, 0);
  RunHkv("generate --kv-policy lru", &status);
  EXPECT_NE(status, 0);
}

TEST(CliTest, HeadkvPlanJsonHasTheRequestedShape) {
  const std::string scores =
      SharedDataDir() + "/headkv_scores/Meta-Llama-3-8B-Instruct_retrieval_reasoning_heads.json";
  int status = 0;
  std::string out = RunHkv("headkv-plan --scores " + scores + " --budget 128 --json", &status);
  ASSERT_EQ(status, 0) << out;
  nlohmann::json j = nlohmann::json::parse(out);
  EXPECT_EQ(j["num_layers"], 32);
  EXPECT_EQ(j["num_heads"], 32);
  ASSERT_EQ(j["capacity"].size(), 32u);
  int64_t total = 0;
  for (const auto& layer : j["capacity"]) {
    ASSERT_EQ(layer.size(), 32u);
    for (const auto& c : layer) total += c.get<int64_t>();
  }
  EXPECT_NEAR(total, 32 * 32 * 120, 32 * 32 / 2);
  out = RunHkv("headkv-plan --scores " + scores + " --budget 1024 --kv-heads 8 --json", &status);
  ASSERT_EQ(status, 0);
  j = nlohmann::json::parse(out);
  EXPECT_EQ(j["num_heads"], 8);
  EXPECT_EQ(j["capacity"][0].size(), 8u);
  RunHkv("headkv-plan --scores /nonexistent.json --budget 128 --json", &status);
  EXPECT_NE(status, 0);
  RunHkv("headkv-plan --scores " + scores + " --budget 4 --json", &status);
  EXPECT_NE(status, 0);
}

TEST(CliTest, ServePrintConfigReflectsFileAndFlags) {
  const std::string path = ::testing::TempDir() + "/hkv_config.yaml";
  FILE* f = fopen(path.c_str(), "w");
  fputs("port: 6000\nmetrics_port: 6001\ndefault_kv_policy: snapkv\n", f);
  fclose(f);
  int status = 0;
  nlohmann::json j = nlohmann::json::parse(
      RunHkv("serve --print-config --config " + path + " --metrics-port 7001", &status));
  ASSERT_EQ(status, 0);
  EXPECT_EQ(j["port"], 6000);
  EXPECT_EQ(j["metrics_port"], 7001);
  EXPECT_EQ(j["default_kv_policy"], "snapkv");
  EXPECT_EQ(j["health"]["readiness_service"], "hkv.v1.Generation");
  f = fopen(path.c_str(), "w");
  fputs("prot: 6000\n", f);
  fclose(f);
  RunHkv("serve --print-config --config " + path, &status);
  EXPECT_NE(status, 0) << "an unknown key must be rejected";
}

// Multi-node start-up errors are clear and exit 1 (no GPU needed to get them).
TEST(CliTest, ServeRefusesMultiNodeLayoutsThatCannotWork) {
  const std::string serve = std::string(HKV_BINARY) + " serve --host=127.0.0.1 --port=0 ";
  auto run = [&](const std::string& args, std::string* err) {
    const std::string command = serve + args + " 2>&1 >/dev/null";
    FILE* pipe = popen(command.c_str(), "r");
    char buffer[4096];
    size_t n;
    err->clear();
    while ((n = fread(buffer, 1, sizeof(buffer), pipe)) > 0) err->append(buffer, n);
    const int raw = pclose(pipe);
    return WIFEXITED(raw) ? WEXITSTATUS(raw) : -1;
  };
  std::string err;
  // No leader address (neither flag nor LWS_LEADER_ADDRESS).
  EXPECT_EQ(run("--world-size=2 --rank=1", &err), 1);
  EXPECT_THAT(err, ::testing::HasSubstr("LWS_LEADER_ADDRESS"));
  // Rank outside the group.
  EXPECT_EQ(run("--world-size=2 --rank=2 --dist-addr=127.0.0.1:1", &err), 1);
  EXPECT_THAT(err, ::testing::HasSubstr("rank"));
  // Tensor parallel size not a multiple of the nodes (node 0 and a follower).
  EXPECT_EQ(run("--world-size=2 --rank=0 --dist-addr=127.0.0.1:1 --tensor-parallel-size=3", &err),
            1);
  EXPECT_THAT(err, ::testing::HasSubstr("multiple of 2"));
  EXPECT_EQ(run("--world-size=2 --rank=1 --dist-addr=127.0.0.1:1 --tensor-parallel-size=1", &err),
            1);
  EXPECT_THAT(err, ::testing::HasSubstr("multiple of 2"));
}

}  // namespace
}  // namespace hkv
