// MergeBpe against the straightforward O(n^2) merge it replaced (kept here as the reference):
// on random strings, with synthetic merge tables full of ties, and with the merge tables of the
// vendored vocabularies (llama2.c's tok512 scores, llama.cpp's Llama-2 scores, Llama-3 and
// Qwen2 ranks), both must merge to exactly the same symbols.

#include "tokenizer/bpe_merge.h"

#include <cstring>
#include <fstream>
#include <functional>
#include <limits>
#include <random>
#include <string>
#include <unordered_map>

#include "common/paths.h"
#include "gtest/gtest.h"
#include "tokenizer/gguf_vocab.h"

namespace hkv {
namespace {

// The reference: scan every adjacent pair, merge the lowest rank (the leftmost of equal ranks),
// repeat until none merges.
std::vector<BpeSymbol> ReferenceMerge(BpePairFn pair, std::vector<BpeSymbol> symbols) {
  while (symbols.size() > 1) {
    std::optional<BpePair> best;
    size_t best_at = 0;
    for (size_t i = 0; i + 1 < symbols.size(); ++i) {
      std::optional<BpePair> p = pair(symbols[i], symbols[i + 1]);
      if (p.has_value() && (!best.has_value() || p->rank < best->rank)) {
        best = p;
        best_at = i;
      }
    }
    if (!best.has_value()) break;
    symbols[best_at] = best->merged;
    symbols.erase(symbols.begin() + best_at + 1);
  }
  return symbols;
}

std::vector<std::string> Texts(const std::vector<BpeSymbol>& symbols) {
  std::vector<std::string> out;
  for (const BpeSymbol& s : symbols) out.emplace_back(s.text);
  return out;
}

BpeSymbol Joined(const BpeSymbol& left, const BpeSymbol& right) {
  return {std::string_view(left.text.data(), left.text.size() + right.text.size()), -1};
}

// One symbol per UTF-8 character of `text` (which must be valid).
std::vector<BpeSymbol> Chars(std::string_view text) {
  std::vector<BpeSymbol> out;
  for (size_t i = 0; i < text.size();) {
    const unsigned char c = static_cast<unsigned char>(text[i]);
    const size_t n = c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
    out.push_back({text.substr(i, n), -1});
    i += n;
  }
  return out;
}

// Runs both merges on `symbols`; returns the number of merges done.
int64_t ExpectSameMerge(BpePairFn pair, const std::vector<BpeSymbol>& symbols,
                        const std::string& what) {
  std::vector<BpeSymbol> fast = symbols;
  EncodeStats stats;
  EncodeControl control;
  control.stats = &stats;
  EncodeChecker checker(control);
  EXPECT_TRUE(MergeBpe(pair, &checker, &fast).ok());
  EXPECT_EQ(Texts(fast), Texts(ReferenceMerge(pair, symbols))) << what;
  // Linear work: n - 1 pairs at the start; each merge looks its pair up again and forms two.
  EXPECT_LE(stats.pair_lookups, 4 * static_cast<int64_t>(symbols.size())) << what;
  EXPECT_EQ(stats.merges, static_cast<int64_t>(symbols.size() - fast.size())) << what;
  return stats.merges;
}

std::string RandomText(std::mt19937* rng, const std::vector<std::string>& atoms, size_t max_len) {
  std::uniform_int_distribution<size_t> len(0, max_len);
  std::uniform_int_distribution<size_t> pick(0, atoms.size() - 1);
  std::string s;
  const size_t n = len(*rng);
  while (s.size() < n) s += atoms[pick(*rng)];
  return s;
}

TEST(BpeMergeTest, MatchesTheReferenceOnSyntheticTablesWithManyTies) {
  std::mt19937 rng(42);
  int64_t merges = 0;
  for (int round = 0; round < 3000; ++round) {
    // A table that depends on the round: few distinct ranks (ties everywhere), some pairs that
    // never merge, merged symbols up to 8 characters.
    const uint64_t salt = rng();
    const uint32_t distinct_ranks = 1 + round % 5;
    auto pair = [&](const BpeSymbol& l, const BpeSymbol& r) -> std::optional<BpePair> {
      if (l.text.size() + r.text.size() > 8) return std::nullopt;
      const uint64_t h =
          std::hash<std::string>()(std::string(l.text) + "|" + std::string(r.text)) ^ salt;
      if (h % 4 == 0) return std::nullopt;
      return BpePair{static_cast<uint32_t>((h >> 8) % distinct_ranks), Joined(l, r)};
    };
    const std::string text = RandomText(&rng, {"a", "b", "c", "ab"}, 200);
    merges += ExpectSameMerge(pair, Chars(text), text);
    if (HasFailure()) return;
  }
  EXPECT_GT(merges, 10000);  // The tables did merge.
}

TEST(BpeMergeTest, RankOfScoreReversesTheOrderOfScores) {
  const float inf = std::numeric_limits<float>::infinity();
  const float scores[] = {-inf, -1e10f, -3.5f, -1e-30f, 0.0f, 1e-30f, 0.25f, 7.0f, 1e30f, inf};
  for (size_t i = 0; i + 1 < std::size(scores); ++i) {
    EXPECT_GT(RankOfScore(scores[i]), RankOfScore(scores[i + 1])) << scores[i];
  }
  EXPECT_EQ(RankOfScore(0.0f), RankOfScore(-0.0f));
}

// A vocabulary's pieces and scores, and merge ranks ("left right") when it has merges.
struct Vocab {
  std::unordered_map<std::string, int32_t> ids;
  std::vector<float> scores;
  std::unordered_map<std::string, uint32_t> ranks;
};

Vocab FromGguf(const std::string& name) {
  Vocab v;
  auto g = LoadGgufVocab(SharedDataDir() + "/tokenizer_vectors/" + name);
  EXPECT_TRUE(g.ok()) << g.status();
  if (!g.ok()) return v;
  for (size_t i = 0; i < g->tokens.size(); ++i) v.ids.emplace(g->tokens[i], i);
  v.scores = g->scores;
  for (size_t i = 0; i < g->merges.size(); ++i) v.ranks.emplace(g->merges[i], i);
  return v;
}

// llama2.c's tokenizer.bin layout: int32 max_len, then per token float score, int32 length,
// bytes.
Vocab FromLlama2c(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  Vocab v;
  size_t at = 4;
  for (int32_t id = 0; id < 512 && at + 8 <= bytes.size(); ++id) {
    float score;
    int32_t len;
    std::memcpy(&score, bytes.data() + at, 4);
    std::memcpy(&len, bytes.data() + at + 4, 4);
    v.ids.emplace(bytes.substr(at + 8, len), id);
    v.scores.push_back(score);
    at += 8 + len;
  }
  EXPECT_EQ(v.scores.size(), 512u);
  return v;
}

// Pieces merge by the score of the merged piece (SentencePiece, llama2.c).
void ExpectSameMergeByScores(const Vocab& v, const std::vector<std::string>& atoms) {
  std::string key;
  auto pair = [&](const BpeSymbol& l, const BpeSymbol& r) -> std::optional<BpePair> {
    key.assign(l.text);
    key.append(r.text);
    auto it = v.ids.find(key);
    if (it == v.ids.end()) return std::nullopt;
    return BpePair{RankOfScore(v.scores[it->second]), Joined(l, r)};
  };
  std::mt19937 rng(7);
  int64_t merges = 0;
  for (int round = 0; round < 150 && !::testing::Test::HasFailure(); ++round) {
    const std::string text = RandomText(&rng, atoms, 200);
    merges += ExpectSameMerge(pair, Chars(text), text);
  }
  EXPECT_GT(merges, 3000);
}

// Symbols merge by the rank of the rule "left right" (byte-level BPE).
void ExpectSameMergeByRanks(const Vocab& v, const std::vector<std::string>& atoms) {
  ASSERT_FALSE(v.ranks.empty());
  std::string key;
  auto pair = [&](const BpeSymbol& l, const BpeSymbol& r) -> std::optional<BpePair> {
    key.assign(l.text);
    key.push_back(' ');
    key.append(r.text);
    auto it = v.ranks.find(key);
    if (it == v.ranks.end()) return std::nullopt;
    return BpePair{it->second, Joined(l, r)};
  };
  std::mt19937 rng(11);
  int64_t merges = 0;
  for (int round = 0; round < 150 && !::testing::Test::HasFailure(); ++round) {
    const std::string text = RandomText(&rng, atoms, 200);
    merges += ExpectSameMerge(pair, Chars(text), text);
  }
  EXPECT_GT(merges, 3000);
}

const std::vector<std::string> kWords = {"the",  "a", "an", "once", "upon", "time",
                                         "Lily", "e", "s",  "t",    "ing",  "ed",
                                         "x",    "q", "z",  ",",    ".",    "!"};

TEST(BpeMergeTest, MatchesTheReferenceWithLlama2cScores) {
  std::vector<std::string> atoms = kWords;
  atoms.push_back(" ");
  atoms.push_back(" ");
  ExpectSameMergeByScores(FromLlama2c(DefaultTokenizerPath()), atoms);
}

TEST(BpeMergeTest, MatchesTheReferenceWithLlama2SentencePieceScores) {
  std::vector<std::string> atoms = kWords;
  atoms.push_back("\xe2\x96\x81");  // U+2581, SentencePiece's space.
  atoms.push_back("\xe2\x96\x81");
  atoms.push_back("\xc3\xa9");
  ExpectSameMergeByScores(FromGguf("ggml-vocab-llama-spm.gguf"), atoms);
}

TEST(BpeMergeTest, MatchesTheReferenceWithLlama3AndQwen2Ranks) {
  std::vector<std::string> atoms = kWords;
  atoms.push_back("\xc4\xa0");  // U+0120, byte-level BPE's space.
  atoms.push_back("\xc4\xa0");
  atoms.push_back("\xc4\x8a");  // U+010A, its newline.
  atoms.push_back("0");
  atoms.push_back("1");
  ExpectSameMergeByRanks(FromGguf("ggml-vocab-llama-bpe.gguf"), atoms);
  ExpectSameMergeByRanks(FromGguf("ggml-vocab-qwen2.gguf"), atoms);
}

TEST(BpeMergeTest, StopsWithTheCheckersError) {
  std::string text(4 * kEncodeCheckInterval, 'a');
  std::vector<BpeSymbol> symbols = Chars(text);
  auto pair = [](const BpeSymbol& l, const BpeSymbol& r) -> std::optional<BpePair> {
    return BpePair{static_cast<uint32_t>(l.text.size() + r.text.size()), Joined(l, r)};
  };
  EncodeStats stats;
  EncodeControl control;
  control.stats = &stats;
  control.check = [] { return absl::CancelledError("gone"); };
  EncodeChecker checker(control);
  EXPECT_EQ(MergeBpe(pair, &checker, &symbols).code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(stats.checks, 1);
  EXPECT_LE(stats.merges, kEncodeCheckInterval);
}

}  // namespace
}  // namespace hkv
