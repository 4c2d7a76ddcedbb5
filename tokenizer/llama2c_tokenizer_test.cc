#include "tokenizer/llama2c_tokenizer.h"

#include <cstdio>
#include <fstream>

#include "common/paths.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace hkv {
namespace {

std::unique_ptr<Tokenizer> Load() {
  auto tok = LoadLlama2cTokenizer(DefaultTokenizerPath(), 512);
  EXPECT_TRUE(tok.ok()) << tok.status();
  return std::move(*tok);
}

TEST(Llama2cTokenizerTest, GoldenIdsDecodeToTheStory) {
  auto tok = Load();
  const std::vector<TokenId> ids = {1,   403, 407, 261, 378, 432, 383, 286, 261, 376, 298,
                                    315, 421, 395, 317, 426, 338, 401, 396, 267};
  EXPECT_THAT(tok->Decode(ids), ::testing::StartsWith("Once upon a time, there was a little "
                                                      "girl named Lily"));
}

TEST(Llama2cTokenizerTest, RoundTripsText) {
  auto tok = Load();
  for (const char* text : {"Once upon a time", "Lily liked to play in the park.", "a", "Hi! 42?",
                           "caf\xc3\xa9 \xe2\x9c\x93 snow\xe2\x98\x83"}) {
    std::vector<TokenId> ids = tok->Encode(text, /*add_bos=*/true);
    ASSERT_FALSE(ids.empty());
    EXPECT_EQ(ids[0], 1);
    EXPECT_EQ(tok->Decode(ids), text) << text;
  }
}

TEST(Llama2cTokenizerTest, BosOnlyForEmptyTextAndMergesWords) {
  auto tok = Load();
  EXPECT_THAT(tok->Encode("", true), ::testing::ElementsAre(1));
  EXPECT_TRUE(tok->Encode("", false).empty());
  // Merges make fewer tokens than characters.
  EXPECT_LT(tok->Encode("Once upon a time", false).size(), 10u);
  EXPECT_EQ(tok->bos_id(), 1);
  EXPECT_THAT(tok->eos_ids(), ::testing::ElementsAre(2));
}

TEST(Llama2cTokenizerTest, StreamingDecoderNeverSplitsACharacter) {
  auto tok = Load();
  const std::string text = "snow\xe2\x98\x83 caf\xc3\xa9";
  std::vector<TokenId> ids = tok->Encode(text, true);
  IncrementalDecoder decoder(tok.get());
  std::string streamed;
  for (TokenId id : ids) {
    std::string piece = decoder.Push(id);
    EXPECT_TRUE(IsValidUtf8(piece)) << "half a character was emitted";
    streamed += piece;
  }
  streamed += decoder.Flush();
  EXPECT_EQ(streamed, text);
}

TEST(Llama2cTokenizerTest, RejectsTruncatedAndMissingFiles) {
  const std::string path = ::testing::TempDir() + "/tok_truncated.bin";
  {
    std::ifstream in(DefaultTokenizerPath(), std::ios::binary);
    std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    std::ofstream(path, std::ios::binary) << bytes.substr(0, bytes.size() / 2);
  }
  auto truncated = LoadLlama2cTokenizer(path, 512);
  EXPECT_EQ(truncated.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(truncated.status().message()), ::testing::HasSubstr("truncated"));
  {
    std::ofstream out(path, std::ios::binary);
    int32_t bad = -5;
    out.write(reinterpret_cast<const char*>(&bad), 4);
  }
  EXPECT_EQ(LoadLlama2cTokenizer(path, 512).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(LoadLlama2cTokenizer(path + ".missing", 512).status().code(),
            absl::StatusCode::kNotFound);
  std::remove(path.c_str());
}

}  // namespace
}  // namespace hkv
