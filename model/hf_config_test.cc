#include "model/hf_config.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace hkv {
namespace {

// Meta-Llama-3-8B-Instruct's config.json (architecture fields).
constexpr char kLlama3_8B[] = R"({
  "architectures": ["LlamaForCausalLM"], "hidden_size": 4096, "intermediate_size": 14336,
  "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
  "vocab_size": 128256, "max_position_embeddings": 8192, "rms_norm_eps": 1e-05,
  "rope_theta": 500000.0, "tie_word_embeddings": false, "rope_scaling": null})";

TEST(HfConfigTest, ParsesLlama3_8B) {
  auto c = ParseHfConfig(kLlama3_8B, "/m/Meta-Llama-3-8B-Instruct/config.json");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->dim, 4096);
  EXPECT_EQ(c->num_kv_heads, 8);
  EXPECT_EQ(c->head_dim, 128);
  EXPECT_EQ(c->vocab_size, 128256);
  EXPECT_FLOAT_EQ(c->rope_theta, 500000.0f);
  EXPECT_EQ(c->rope_style, RopeStyle::kHalf);
  EXPECT_FALSE(c->tie_embeddings);
  EXPECT_EQ(c->name, "Meta-Llama-3-8B-Instruct");
}

TEST(HfConfigTest, ReadsLlama31RopeScalingAndQwenBiases) {
  auto c = ParseHfConfig(R"({"architectures": ["LlamaForCausalLM"], "hidden_size": 64,
    "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
    "num_key_value_heads": 2, "vocab_size": 100, "max_position_embeddings": 512,
    "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
    "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}})", "x");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->rope_scaling.type, "llama3");
  EXPECT_FLOAT_EQ(c->rope_scaling.factor, 8.0f);
  auto q = ParseHfConfig(R"({"architectures": ["Qwen2ForCausalLM"], "hidden_size": 64,
    "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
    "vocab_size": 100, "max_position_embeddings": 512, "tie_word_embeddings": true})", "q");
  ASSERT_TRUE(q.ok()) << q.status();
  EXPECT_TRUE(q->qkv_bias);
  EXPECT_TRUE(q->tie_embeddings);
  EXPECT_EQ(q->num_kv_heads, 4);
}

TEST(HfConfigTest, RejectsBadConfigsWithClearErrors) {
  auto bad = [](const char* text) { return ParseHfConfig(text, "cfg").status(); };
  EXPECT_THAT(std::string(bad("{").message()), ::testing::HasSubstr("not a JSON object"));
  EXPECT_THAT(std::string(bad(R"({"architectures": ["GPT2LMHeadModel"]})").message()),
              ::testing::HasSubstr("not supported"));
  EXPECT_THAT(std::string(bad(R"({"architectures": ["LlamaForCausalLM"]})").message()),
              ::testing::HasSubstr("hidden_size"));
  EXPECT_THAT(
      std::string(bad(R"({"architectures": ["LlamaForCausalLM"], "hidden_size": "big"})").message()),
      ::testing::HasSubstr("positive integer"));
  EXPECT_EQ(LoadHfConfig("/nonexistent").status().code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace hkv
