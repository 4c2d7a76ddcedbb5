// Chunked compressed prefill end to end, on the CPU engine: for every KV policy, a prompt
// prefilled in many chunks (a small --max-batch-tokens), in two, or in one step gives the same
// greedy tokens and keeps the same number of KV tokens; on stories260K and on the trained
// needle fixture (tests/data/needle).

#include <cstdio>
#include <fstream>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/paths.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "server/engine.h"
#include "server/model_setup.h"
#include "server/server_config.h"

namespace hkv {
namespace {

struct Outcome {
  std::vector<TokenId> tokens;
  int64_t kv_tokens_kept = 0;
  bool finished = false;
};

// Runs `prompt` greedily through a fresh CPU engine with `max_batch_tokens`, beside a short
// request decoding alongside (so chunks share steps with a decode), and returns its outcome.
Outcome Run(ServerConfig config, int32_t max_batch_tokens, const std::vector<TokenId>& prompt,
            const std::string& policy, int32_t budget, int32_t max_tokens) {
  config.device = "cpu";
  config.num_threads = 2;
  config.max_batch_tokens = max_batch_tokens;
  auto bundle = BuildEngine(config);
  EXPECT_TRUE(bundle.ok()) << bundle.status();
  if (!bundle.ok()) return {};
  Engine& engine = *bundle->engine;
  engine.Start();
  auto make = [&](std::vector<TokenId> p, int32_t n, const std::string& kv_policy) {
    EngineRequest r;
    r.prompt = std::move(p);
    r.sampling.max_tokens = n;
    r.sampling.temperature = 0;
    r.sampling.ignore_eos = true;
    r.seed = 1;
    r.kv_policy = kv_policy;
    r.kv_budget = kv_policy == "full" ? 0 : budget;
    return r;
  };
  auto side = engine.Submit(make({prompt.begin(), prompt.begin() + 3}, 2 * max_tokens, "full"));
  auto main = engine.Submit(make(prompt, max_tokens, policy));
  EXPECT_TRUE(side.ok() && main.ok());
  if (!side.ok() || !main.ok()) return {};
  Outcome out;
  const absl::Time end = absl::Now() + absl::Seconds(60);
  while (!out.finished && absl::Now() < end) {
    std::optional<StreamChunk> chunk = (*main)->Next(absl::Milliseconds(100));
    if (!chunk.has_value()) continue;
    out.tokens.insert(out.tokens.end(), chunk->token_ids.begin(), chunk->token_ids.end());
    if (chunk->finished) {
      out.finished = true;
      EXPECT_TRUE(chunk->status.ok()) << chunk->status;
      EXPECT_EQ(chunk->finish, FinishReason::kLength);
      out.kv_tokens_kept = chunk->usage.kv_tokens_kept;
    }
  }
  return out;
}

// The one-step prefill (the default budget holds the whole prompt) against 2 and many chunks.
void ExpectChunkingChangesNothing(const ServerConfig& config, const std::vector<TokenId>& prompt,
                                  const std::vector<std::string>& policies, int32_t budget,
                                  int32_t max_tokens, const std::vector<int32_t>& chunk_budgets) {
  for (const std::string& policy : policies) {
    SCOPED_TRACE(policy);
    const Outcome one = Run(config, 8192, prompt, policy, budget, max_tokens);
    ASSERT_TRUE(one.finished);
    ASSERT_EQ(one.tokens.size(), static_cast<size_t>(max_tokens));
    for (int32_t b : chunk_budgets) {
      SCOPED_TRACE(absl::StrCat("max_batch_tokens ", b));
      const Outcome chunked = Run(config, b, prompt, policy, budget, max_tokens);
      ASSERT_TRUE(chunked.finished);
      EXPECT_EQ(chunked.tokens, one.tokens);
      EXPECT_EQ(chunked.kv_tokens_kept, one.kv_tokens_kept);
    }
  }
}

TEST(ChunkedPrefillTest, Stories260KEveryPolicy) {
  ServerConfig config;
  config.model = DefaultModelPath();
  config.tokenizer = DefaultTokenizerPath();
  config.kv_pool_blocks = 4096;
  config.head_scores = SourceDir() + "/tests/data/stories260K_head_scores.json";
  std::vector<TokenId> prompt = {1};
  for (int32_t i = 0; prompt.size() < 300; ++i) prompt.push_back(260 + (i * 37) % 240);
  // 300 tokens: in ~2 chunks at a budget of 200 (beside the decode), 14 at 24.
  ExpectChunkingChangesNothing(config, prompt, {"snapkv", "pyramidkv", "adakv", "headkv"}, 64, 12,
                               {200, 24});
}

TEST(ChunkedPrefillTest, NeedleEveryPolicy) {
  const std::string dir = SourceDir() + "/tests/data/needle";
  std::ifstream in(dir + "/eval.jsonl");
  std::vector<TokenId> prompt;
  std::string line;
  while (prompt.empty() && std::getline(in, line)) {
    nlohmann::json j = nlohmann::json::parse(line);
    if (j["id"] == "single-1024-00") prompt = j["prompt_ids"].get<std::vector<TokenId>>();
  }
  ASSERT_GT(prompt.size(), 900u);
  prompt.resize(256);  // The start of a real needle prompt: 2 cores prefill ~1k tokens slowly.
  // HeadKV scores for its 6 layers x 8 query heads, in the published format.
  const std::string scores = ::testing::TempDir() + "/needle_head_scores.json";
  {
    nlohmann::json j;
    for (int l = 0; l < 6; ++l) {
      for (int h = 0; h < 8; ++h) {
        j[absl::StrCat(l, "-", h)] = {0.05 + ((l * 8 + h) * 29 % 17) / 20.0};
      }
    }
    std::ofstream(scores) << j.dump();
  }
  ServerConfig config;
  config.model = dir;
  config.tokenizer = dir;
  config.kv_pool_blocks = 4096;
  config.head_scores = scores;
  // 256 tokens: 2 chunks at a budget of 160, 9 at 32.
  ExpectChunkingChangesNothing(config, prompt, {"snapkv", "pyramidkv", "adakv", "headkv"}, 64, 4,
                               {160, 32});
}

}  // namespace
}  // namespace hkv
