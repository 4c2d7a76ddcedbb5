#include "model/llama2c_loader.h"

#include <cstdio>
#include <fstream>
#include <string>

#include "common/paths.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace hkv {
namespace {

using ::testing::HasSubstr;

std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

std::string WriteTemp(const std::string& name, const std::string& bytes) {
  const std::string path = ::testing::TempDir() + "/" + name;
  std::ofstream(path, std::ios::binary) << bytes;
  return path;
}

TEST(Llama2cLoaderTest, LoadsStories260K) {
  auto model = LoadLlama2cCheckpoint(DefaultModelPath());
  ASSERT_TRUE(model.ok()) << model.status();
  const ModelConfig& c = model->config;
  EXPECT_EQ(c.dim, 64);
  EXPECT_EQ(c.hidden_dim, 172);
  EXPECT_EQ(c.num_layers, 5);
  EXPECT_EQ(c.num_heads, 8);
  EXPECT_EQ(c.num_kv_heads, 4);
  EXPECT_EQ(c.head_dim, 8);
  EXPECT_EQ(c.vocab_size, 512);
  EXPECT_EQ(c.max_seq_len, 512);
  EXPECT_TRUE(c.tie_embeddings);
  EXPECT_EQ(c.rope_style, RopeStyle::kInterleaved);
  EXPECT_EQ(model->weights.layers.size(), 5u);
  EXPECT_EQ(model->weights.layers[0].wk.size(), 32u * 64);
  EXPECT_EQ(model->weights.classifier().size(), 512u * 64);
}

TEST(Llama2cLoaderTest, RejectsTruncatedFile) {
  const std::string bytes = ReadAll(DefaultModelPath());
  auto status = LoadLlama2cCheckpoint(WriteTemp("trunc.bin", bytes.substr(0, bytes.size() - 100)))
                    .status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(status.message()), HasSubstr("truncated"));
  EXPECT_EQ(LoadLlama2cCheckpoint(WriteTemp("tiny.bin", "abc")).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(Llama2cLoaderTest, RejectsImpossibleHeaders) {
  std::string bytes = ReadAll(DefaultModelPath());
  for (int field = 0; field < 7; ++field) {
    for (int32_t value : {0, -7, 1 << 30}) {
      if (field == 5 && value == -7) continue;  // Negative vocab is legal (separate classifier).
      std::string copy = bytes;
      std::memcpy(copy.data() + 4 * field, &value, 4);
      auto status = LoadLlama2cCheckpoint(WriteTemp("hdr.bin", copy)).status();
      EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument)
          << "field " << field << " = " << value;
    }
  }
  // Heads that do not divide.
  std::string copy = bytes;
  int32_t heads = 7;
  std::memcpy(copy.data() + 12, &heads, 4);
  EXPECT_EQ(LoadLlama2cCheckpoint(WriteTemp("heads.bin", copy)).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(Llama2cLoaderTest, RejectsMismatchedSizeAndMissingFile) {
  std::string bytes = ReadAll(DefaultModelPath()) + std::string(64, '\0');
  auto status = LoadLlama2cCheckpoint(WriteTemp("long.bin", bytes)).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(status.message()), HasSubstr("implies"));
  EXPECT_EQ(LoadLlama2cCheckpoint("/nonexistent/model.bin").status().code(),
            absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace hkv
