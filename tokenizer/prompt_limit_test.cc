// The prompt byte cap: its premise (no token stands for more than max_bytes_per_token() bytes
// of text, so n bytes make at least n / that many tokens) holds on random text for every
// vocabulary, and the cap refuses what is over it with a message naming both sizes.

#include "tokenizer/prompt_limit.h"

#include <random>

#include "common/paths.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tokenizer/bpe_tokenizers.h"
#include "tokenizer/gguf_vocab.h"
#include "tokenizer/llama2c_tokenizer.h"

namespace hkv {
namespace {

using ::testing::HasSubstr;

std::unique_ptr<Tokenizer> Make(const std::string& name) {
  if (name == "llama2c") {
    auto tokenizer = LoadLlama2cTokenizer(DefaultTokenizerPath(), 512);
    return tokenizer.ok() ? std::move(*tokenizer) : nullptr;
  }
  auto vocab = LoadGgufVocab(SharedDataDir() + "/tokenizer_vectors/ggml-vocab-" + name + ".gguf");
  if (!vocab.ok()) return nullptr;
  auto tokenizer = MakeTokenizerFromGguf(*vocab);
  return tokenizer.ok() ? std::move(*tokenizer) : nullptr;
}

// Text that makes long tokens: runs of spaces, of one letter, of punctuation, repeated words.
std::string RandomText(std::mt19937* rng) {
  static const char* const kAtoms[] = {" ",
                                       "    ",
                                       "                ",
                                       "a",
                                       "=",
                                       "========",
                                       "------",
                                       "the",
                                       "\n",
                                       "\n\n",
                                       "ing",
                                       "\xe2\x96\x81",
                                       "\xe4\xb8\xad",
                                       "\xff",
                                       "0"};
  std::uniform_int_distribution<size_t> pick(0, std::size(kAtoms) - 1), runs(1, 40);
  std::string s;
  const size_t n = runs(*rng);
  for (size_t i = 0; i < n; ++i) {
    const std::string atom = kAtoms[pick(*rng)];
    const size_t repeat = runs(*rng);
    for (size_t r = 0; r < repeat; ++r) s += atom;
  }
  return s;
}

class BytesPerTokenTest : public ::testing::TestWithParam<const char*> {};

TEST_P(BytesPerTokenTest, NoTokenStandsForMoreBytes) {
  std::unique_ptr<Tokenizer> tokenizer = Make(GetParam());
  ASSERT_NE(tokenizer, nullptr);
  const int64_t bound = tokenizer->max_bytes_per_token();
  ASSERT_GT(bound, 0) << "every byte of these vocabularies has a token";
  std::mt19937 rng(3);
  for (int i = 0; i < 300; ++i) {
    const std::string text = RandomText(&rng);
    const int64_t tokens = static_cast<int64_t>(tokenizer->Encode(text, false).size());
    ASSERT_GE(tokens * bound, static_cast<int64_t>(text.size()))
        << GetParam() << ": " << text.size() << " bytes in " << tokens << " tokens";
  }
}

INSTANTIATE_TEST_SUITE_P(Vocabs, BytesPerTokenTest,
                         ::testing::Values("llama2c", "llama-spm", "llama-bpe", "qwen2"),
                         [](const ::testing::TestParamInfo<const char*>& info) {
                           std::string name = info.param;
                           for (char& c : name) {
                             if (c == '-') c = '_';
                           }
                           return name;
                         });

TEST(PromptLimitTest, DerivedFromTheContextAndLoweredByTheFlag) {
  std::unique_ptr<Tokenizer> tokenizer = Make("llama2c");
  ASSERT_NE(tokenizer, nullptr);
  ASSERT_EQ(tokenizer->max_bytes_per_token(), 7);  // tok512's longest piece.
  const PromptByteLimit derived = MakePromptByteLimit(*tokenizer, 512, 0);
  EXPECT_EQ(derived.max_bytes, 512 * 7);
  EXPECT_TRUE(CheckPromptBytes(512 * 7, derived).ok());
  const absl::Status over = CheckPromptBytes(512 * 7 + 1, derived);
  EXPECT_EQ(over.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(over.message()),
              HasSubstr("the prompt is 3585 bytes; at most 3584 for a context of 512 tokens"));
  // The flag lowers the cap, and cannot raise it past what can ever fit.
  const PromptByteLimit lowered = MakePromptByteLimit(*tokenizer, 512, 1000);
  EXPECT_EQ(lowered.max_bytes, 1000);
  EXPECT_THAT(std::string(CheckPromptBytes(1001, lowered).message()),
              HasSubstr("at most 1000 (max_prompt_bytes)"));
  EXPECT_EQ(MakePromptByteLimit(*tokenizer, 512, 1 << 30).max_bytes, 512 * 7);
}

TEST(PromptLimitTest, EncodePromptRefusesBeforeTokenizing) {
  std::unique_ptr<Tokenizer> tokenizer = Make("llama2c");
  ASSERT_NE(tokenizer, nullptr);
  const PromptByteLimit limit = MakePromptByteLimit(*tokenizer, 512, 0);
  EncodeStats stats;
  EncodeControl control;
  control.stats = &stats;
  const std::string huge(size_t{1} << 20, 'a');
  EXPECT_EQ(EncodePrompt(*tokenizer, huge, true, limit, control).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(stats.pair_lookups, 0) << "refused without tokenizing";
  auto ok = EncodePrompt(*tokenizer, "Once upon a time", true, limit, control);
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ(*ok, tokenizer->Encode("Once upon a time", true));
}

TEST(PromptLimitTest, NoCapWithoutABoundOrAFlag) {
  // A SentencePiece vocabulary without byte tokens drops unknown bytes: no bound exists.
  BpeVocab v;
  v.tokens = {"<unk>", "\xe2\x96\x81", "a",
              "\xe2\x96\x81"
              "a"};
  v.scores = {0, 0, 0, 1};
  auto tokenizer = MakeSentencePieceBpeTokenizer(v);
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  EXPECT_EQ((*tokenizer)->max_bytes_per_token(), 0);
  EXPECT_EQ(MakePromptByteLimit(**tokenizer, 512, 0).max_bytes, 0);
  EXPECT_TRUE(CheckPromptBytes(int64_t{1} << 40, MakePromptByteLimit(**tokenizer, 512, 0)).ok());
  EXPECT_EQ(MakePromptByteLimit(**tokenizer, 512, 5000).max_bytes, 5000);
}

}  // namespace
}  // namespace hkv
