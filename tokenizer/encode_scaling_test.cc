// Guards "a 1 MiB text prompt pins a core for hours": every tokenizer encodes 1 MiB of
// adversarial text (one word the pre-tokenizer cannot split, one repeated character, random
// bytes, one run of spaces, added-token look-alikes, ordinary prose) in linear work, and stops
// when its check says so.

#include <random>
#include <string>

#include "absl/time/clock.h"
#include "common/paths.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tokenizer/bpe_merge.h"
#include "tokenizer/bpe_tokenizers.h"
#include "tokenizer/gguf_vocab.h"
#include "tokenizer/hf_tokenizer.h"
#include "tokenizer/llama2c_tokenizer.h"

namespace hkv {
namespace {

constexpr size_t kSmall = size_t{64} << 10;
constexpr size_t kLarge = size_t{1} << 20;

std::unique_ptr<Tokenizer> FromGguf(const std::string& name) {
  auto vocab = LoadGgufVocab(SharedDataDir() + "/tokenizer_vectors/" + name);
  if (!vocab.ok()) return nullptr;
  auto tokenizer = MakeTokenizerFromGguf(*vocab);
  return tokenizer.ok() ? std::move(*tokenizer) : nullptr;
}

// Llama-3's vocabulary as a tokenizer.json whose 256 special tokens are parsed in the text.
std::unique_ptr<Tokenizer> Llama3WithAddedTokens() {
  auto g = LoadGgufVocab(SharedDataDir() + "/tokenizer_vectors/ggml-vocab-llama-bpe.gguf");
  if (!g.ok()) return nullptr;
  nlohmann::json t, vocab = nlohmann::json::object();
  t["added_tokens"] = nlohmann::json::array();
  for (size_t i = 0; i < g->tokens.size(); ++i) {
    if (g->token_types[i] == 3) {
      t["added_tokens"].push_back({{"id", i}, {"content", g->tokens[i]}, {"special", true}});
    } else {
      vocab[g->tokens[i]] = i;
    }
  }
  t["model"] = {{"type", "BPE"}, {"vocab", vocab}, {"merges", g->merges}, {"ignore_merges", true}};
  t["pre_tokenizer"] = {
      {"type", "Sequence"},
      {"pretokenizers",
       {{{"type", "Split"}, {"pattern", {{"Regex", *PreTokenizerPattern("llama3")}}}},
        {{"type", "ByteLevel"}}}}};
  auto tokenizer = ParseHfTokenizer(t.dump(), "", "");
  return tokenizer.ok() ? std::move(*tokenizer) : nullptr;
}

std::unique_ptr<Tokenizer> Make(const std::string& name) {
  if (name == "llama2c") {
    auto tokenizer = LoadLlama2cTokenizer(DefaultTokenizerPath(), 512);
    return tokenizer.ok() ? std::move(*tokenizer) : nullptr;
  }
  if (name == "llama3_added") return Llama3WithAddedTokens();
  return FromGguf("ggml-vocab-" + name + ".gguf");
}

std::string Adversarial(const std::string& kind, size_t bytes) {
  std::mt19937 rng(1);
  std::string s;
  s.reserve(bytes + 64);
  if (kind == "one_word") {
    std::uniform_int_distribution<int> letter('a', 'z');
    while (s.size() < bytes) s.push_back(static_cast<char>(letter(rng)));
  } else if (kind == "one_char") {
    s.assign(bytes, 'a');
  } else if (kind == "random_bytes") {
    std::uniform_int_distribution<int> byte(0, 255);
    while (s.size() < bytes) s.push_back(static_cast<char>(byte(rng)));
  } else if (kind == "spaces") {
    s.assign(bytes, ' ');
  } else if (kind == "added_lookalikes") {
    while (s.size() < bytes) s += "<|reserved_special_token_";
  } else {  // prose
    while (s.size() < bytes) s += "Once upon a time, Lily's 3 cats (and 42 dogs!) played.\n";
  }
  s.resize(bytes);
  return s;
}

struct EncodeRun {
  size_t tokens = 0;
  EncodeStats stats;
};

EncodeRun Encode(const Tokenizer& tokenizer, const std::string& text) {
  EncodeRun run;
  EncodeControl control;
  control.stats = &run.stats;
  control.check = [] { return absl::OkStatus(); };
  absl::StatusOr<std::vector<TokenId>> ids = tokenizer.TryEncode(text, true, control);
  EXPECT_TRUE(ids.ok()) << ids.status();
  if (ids.ok()) run.tokens = ids->size();
  return run;
}

using Case = std::tuple<const char*, const char*>;

class EncodeScalingTest : public ::testing::TestWithParam<Case> {};

TEST_P(EncodeScalingTest, OneMebibyteTakesLinearWork) {
  const auto [name, kind] = GetParam();
  std::unique_ptr<Tokenizer> tokenizer = Make(name);
  ASSERT_NE(tokenizer, nullptr);
  const EncodeRun small = Encode(*tokenizer, Adversarial(kind, kSmall));
  const absl::Time start = absl::Now();
  const EncodeRun large = Encode(*tokenizer, Adversarial(kind, kLarge));
  const absl::Duration took = absl::Now() - start;
  // A few seconds at most on a loaded 2-core machine; the quadratic merge took hours.
  EXPECT_LT(took, absl::Seconds(60));
  EXPECT_GT(large.tokens, 0u);
  // Each symbol is a byte or a character, so merging looks up at most 4 pairs per byte; and
  // 16 times the text is at most ~16 times the work (the O(n^2) merge did ~256 times more).
  EXPECT_LE(large.stats.pair_lookups, 4 * static_cast<int64_t>(kLarge) + 8);
  EXPECT_LE(large.stats.pair_lookups, 17 * small.stats.pair_lookups + 64);
  EXPECT_LE(large.stats.merges, 17 * small.stats.merges + 64);
  // The check was polled all along, not only at the end: about once per 64 Ki units of work.
  EXPECT_GE(large.stats.checks, static_cast<int64_t>(kLarge / kEncodeCheckInterval) - 1);
  std::printf("%s/%s: 1 MiB -> %zu tokens in %s; %lld pair lookups, %lld merges, %lld checks\n",
              name, kind, large.tokens, absl::FormatDuration(took).c_str(),
              static_cast<long long>(large.stats.pair_lookups),
              static_cast<long long>(large.stats.merges),
              static_cast<long long>(large.stats.checks));
}

INSTANTIATE_TEST_SUITE_P(Tokenizers, EncodeScalingTest,
                         ::testing::Combine(::testing::Values("llama2c", "llama-spm", "llama-bpe",
                                                              "qwen2", "llama3_added"),
                                            ::testing::Values("one_word", "one_char",
                                                              "random_bytes", "spaces",
                                                              "added_lookalikes", "prose")),
                         [](const ::testing::TestParamInfo<Case>& info) {
                           std::string name =
                               std::string(std::get<0>(info.param)) + "_" + std::get<1>(info.param);
                           for (char& c : name) {
                             if (c == '-') c = '_';
                           }
                           return name;
                         });

class EncodeCancelTest : public ::testing::TestWithParam<const char*> {};

TEST_P(EncodeCancelTest, StopsWithTheChecksError) {
  std::unique_ptr<Tokenizer> tokenizer = Make(GetParam());
  ASSERT_NE(tokenizer, nullptr);
  const std::string text = Adversarial("prose", kLarge);
  for (const absl::Status& error :
       {absl::CancelledError("gone"), absl::DeadlineExceededError("late")}) {
    EncodeStats stats;
    EncodeControl control;
    control.stats = &stats;
    // Fails on the third poll: the encoding has started and must stop there.
    control.check = [&stats, error] { return stats.checks < 3 ? absl::OkStatus() : error; };
    absl::StatusOr<std::vector<TokenId>> ids = tokenizer->TryEncode(text, true, control);
    EXPECT_EQ(ids.status().code(), error.code());
    EXPECT_EQ(stats.checks, 3);
  }
  // Short text is never checked.
  EncodeStats stats;
  EncodeControl control;
  control.stats = &stats;
  control.check = [] { return absl::CancelledError("gone"); };
  EXPECT_TRUE(tokenizer->TryEncode("Once upon a time", true, control).ok());
  EXPECT_EQ(stats.checks, 0);
}

INSTANTIATE_TEST_SUITE_P(Tokenizers, EncodeCancelTest,
                         ::testing::Values("llama2c", "llama-spm", "llama-bpe", "llama3_added"),
                         [](const ::testing::TestParamInfo<const char*>& info) {
                           std::string name = info.param;
                           for (char& c : name) {
                             if (c == '-') c = '_';
                           }
                           return name;
                         });

}  // namespace
}  // namespace hkv
