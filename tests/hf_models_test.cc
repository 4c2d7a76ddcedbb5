// Hugging Face checkpoints against transformers itself:
// tests/data/hf/{llama,mistral,qwen2,llama_hd64} were saved by transformers
// (tests/data/make_fixtures.py) with its fp32 logits; hkv's CPU reference must match them (max abs
// error < 1e-4) and continue greedily the same way.

#include <unistd.h>

#include <cmath>
#include <fstream>
#include <string>

#include "common/paths.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "model/hf_loader.h"
#include "nlohmann/json.hpp"
#include "workers/cpu/cpu_worker.h"
#include "workers/test_batch_builder.h"

namespace hkv {
namespace {

using testing::BatchBuilder;
using testing::kBlockSize;
using testing::kBlocksPerRow;
using testing::TestSeq;

std::string Fixture(const std::string& name) { return SourceDir() + "/tests/data/hf/" + name; }

class HfModelsTest : public ::testing::TestWithParam<const char*> {};

TEST_P(HfModelsTest, LogitsAndGreedyMatchTransformers) {
  auto model = LoadHfModel(Fixture(GetParam()));
  ASSERT_TRUE(model.ok()) << model.status();
  auto shared = std::make_shared<const Model>(std::move(*model));
  const ModelConfig& c = shared->config;
  CpuWorker worker(shared, 8 * c.num_layers * c.num_kv_heads * kBlocksPerRow, kBlockSize, 2);
  worker.set_return_logits(true);
  std::ifstream in(Fixture(GetParam()) + "/expected.json");
  nlohmann::json expected = nlohmann::json::parse(in);
  int32_t slot = 0;
  for (const auto& cs : expected["cases"]) {
    const std::vector<TokenId> prompt = cs["prompt"].get<std::vector<TokenId>>();
    const std::vector<float> want = cs["last_logits"].get<std::vector<float>>();
    TestSeq seq{slot++, {}, 0};
    BatchBuilder b(c);
    b.AddPlain(&seq, prompt, true, 0);
    auto r = worker.Execute(b.Take());
    ASSERT_TRUE(r.ok()) << r.status();
    const std::vector<float>& got = r->seqs[0].logits;
    ASSERT_EQ(got.size(), want.size());
    double max_err = 0;
    for (size_t i = 0; i < got.size(); ++i)
      max_err = std::max<double>(max_err, std::fabs(got[i] - want[i]));
    EXPECT_LT(max_err, 1e-4) << GetParam() << " prompt of " << prompt.size();
    std::printf("%s: prompt %zu tokens, max abs logit error %.2e\n", GetParam(), prompt.size(),
                max_err);
    std::vector<TokenId> greedy = {r->seqs[0].token};
    while (greedy.size() < cs["greedy"].size()) {
      BatchBuilder d(c);
      d.AddPlain(&seq, {greedy.back()}, true, greedy.size());
      auto s = worker.Execute(d.Take());
      ASSERT_TRUE(s.ok()) << s.status();
      greedy.push_back(s->seqs[0].token);
    }
    EXPECT_EQ(greedy, cs["greedy"].get<std::vector<TokenId>>()) << GetParam();
  }
}

INSTANTIATE_TEST_SUITE_P(Architectures, HfModelsTest,
                         ::testing::Values("llama", "mistral", "qwen2", "llama_hd64"));

TEST(HfLoaderTest, ConfigsAreReadRight) {
  auto llama = LoadHfModel(Fixture("llama"));
  ASSERT_TRUE(llama.ok());
  EXPECT_EQ(llama->config.rope_scaling.type, "llama3");
  EXPECT_EQ(llama->config.rope_style, RopeStyle::kHalf);
  auto qwen = LoadHfModel(Fixture("qwen2"));
  ASSERT_TRUE(qwen.ok());
  EXPECT_TRUE(qwen->config.qkv_bias);
  EXPECT_TRUE(qwen->config.tie_embeddings);
  auto mistral = LoadModel(Fixture("mistral"));
  ASSERT_TRUE(mistral.ok()) << mistral.status();
  EXPECT_EQ(mistral->config.sliding_window, 4096);
}

// Copies a fixture into a temp dir so tests can break it.
std::string CopyFixture(const std::string& name, const std::string& tag) {
  // The pid keeps concurrent runs (several checkouts on one machine) out of each other's way.
  const std::string dir =
      ::testing::TempDir() + "/hkv_hf_" + tag + "_" + std::to_string(::getpid());
  std::system(("rm -rf " + dir + " && cp -r " + Fixture(name) + " " + dir).c_str());
  return dir;
}

TEST(HfLoaderTest, BrokenCheckpointsGiveClearErrors) {
  // Index naming a missing shard.
  std::string dir = CopyFixture("mistral", "shard");
  std::remove((dir + "/model-00002-of-00005.safetensors").c_str());
  auto s = LoadHfModel(dir).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), ::testing::HasSubstr("model-00002-of-00005.safetensors"));
  // Corrupt header.
  dir = CopyFixture("llama", "corrupt");
  {
    std::fstream f(dir + "/model.safetensors", std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(8);
    f.write("#####", 5);
  }
  EXPECT_THAT(std::string(LoadHfModel(dir).status().message()), ::testing::HasSubstr("corrupt"));
  // Truncated data.
  dir = CopyFixture("llama", "trunc");
  std::system(("truncate -s 50000 " + dir + "/model.safetensors").c_str());
  EXPECT_THAT(std::string(LoadHfModel(dir).status().message()),
              ::testing::HasSubstr("outside the file"));
  // Wrong shapes and missing tensors: a config that does not match the weights.
  dir = CopyFixture("llama", "shape");
  std::system(
      ("sed -i 's/\"intermediate_size\": 160/\"intermediate_size\": 128/' " + dir + "/config.json")
          .c_str());
  s = LoadHfModel(dir).status();
  EXPECT_THAT(std::string(s.message()), ::testing::HasSubstr("expected [128, 64]"));
  dir = CopyFixture("llama", "layers");
  std::system(
      ("sed -i 's/\"num_hidden_layers\": 2/\"num_hidden_layers\": 3/' " + dir + "/config.json")
          .c_str());
  s = LoadHfModel(dir).status();
  EXPECT_THAT(std::string(s.message()),
              ::testing::HasSubstr("model.layers.2.input_layernorm.weight"));
  dir = CopyFixture("llama", "extra");
  std::system(
      ("sed -i 's/\"num_hidden_layers\": 2/\"num_hidden_layers\": 1/' " + dir + "/config.json")
          .c_str());
  s = LoadHfModel(dir).status();
  EXPECT_THAT(std::string(s.message()), ::testing::HasSubstr("unexpected tensors"));
  // Unsupported architecture.
  dir = CopyFixture("llama", "arch");
  std::system(("sed -i 's/LlamaForCausalLM/GPT2LMHeadModel/' " + dir + "/config.json").c_str());
  EXPECT_THAT(std::string(LoadHfModel(dir).status().message()),
              ::testing::HasSubstr("not supported"));
  EXPECT_EQ(LoadHfModel("/nonexistent").status().code(), absl::StatusCode::kNotFound);
  for (const char* tag : {"shard", "corrupt", "trunc", "shape", "layers", "extra", "arch"}) {
    std::system(
        ("rm -rf " + ::testing::TempDir() + "/hkv_hf_" + tag + "_" + std::to_string(::getpid()))
            .c_str());
  }
}

}  // namespace
}  // namespace hkv
