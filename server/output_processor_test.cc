// OutputProcessor: text deltas, UTF-8 repair and stop strings. A table tokenizer fixes token
// boundaries exactly (what these rules are about); the stories260K tokenizer checks real
// byte-fallback tokens. A randomized test holds the automaton to the engine's earlier
// rescanning matcher, token for token.

#include "server/output_processor.h"

#include <algorithm>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "common/paths.h"
#include "gtest/gtest.h"
#include "tokenizer/llama2c_tokenizer.h"
#include "tokenizer/utf8.h"

namespace hkv {
namespace {

// Token id i is the bytes pieces[i].
class TableTokenizer : public Tokenizer {
 public:
  explicit TableTokenizer(std::vector<std::string> pieces) : pieces_(std::move(pieces)) {}
  absl::StatusOr<std::vector<TokenId>> TryEncode(std::string_view, bool,
                                                 const EncodeControl&) const override {
    return std::vector<TokenId>{};
  }
  std::string TokenBytes(TokenId, TokenId id) const override { return pieces_[id]; }
  int32_t vocab_size() const override { return static_cast<int32_t>(pieces_.size()); }
  TokenId bos_id() const override { return -1; }
  std::vector<TokenId> eos_ids() const override { return {}; }

 private:
  std::vector<std::string> pieces_;
};

struct Output {
  std::vector<std::string> deltas;
  std::string text;
  int stopped_at = -1;  // Index of the token whose Push reported stop_hit.
};

// Pushes `pieces` as one token each (the last with last=true) until a stop hits.
Output Feed(const std::vector<std::string>& pieces, const std::vector<std::string>& stop) {
  TableTokenizer tok(pieces);
  OutputProcessor p(&tok, -1, stop);
  Output run;
  for (size_t i = 0; i < pieces.size(); ++i) {
    OutputProcessor::Delta d = p.Push(static_cast<TokenId>(i), i + 1 == pieces.size());
    EXPECT_TRUE(IsValidUtf8(d.text));
    run.deltas.push_back(d.text);
    run.text += d.text;
    if (d.stop_hit) {
      run.stopped_at = static_cast<int>(i);
      break;
    }
  }
  return run;
}

TEST(OutputProcessorTest, WithoutStopStringsTextStreamsAsItComes) {
  Output r = Feed({"Once", " upon", " a", " time"}, {});
  EXPECT_EQ(r.deltas, (std::vector<std::string>{"Once", " upon", " a", " time"}));
  EXPECT_EQ(r.stopped_at, -1);
}

TEST(OutputProcessorTest, InvalidBytesBecomeReplacementsAndSplitCharactersWait) {
  const std::string kR(kUtf8Replacement);
  Output r = Feed({"a\xE2", "\x98", "\x83", "\xFF", "b\xF0\x9F", "c", "\xE2\x98"}, {});
  EXPECT_EQ(r.deltas, (std::vector<std::string>{"a", "", "\xE2\x98\x83", kR, "b", kR + "c", kR}));
}

TEST(OutputProcessorTest, StopStringEndsTheOutputAndHoldsBackItsStart) {
  Output r = Feed({"a", " lit", "tle", " gi", "rl", " ran"}, {"little girl"});
  EXPECT_EQ(r.deltas, (std::vector<std::string>{"a", " ", "", "", ""}));
  EXPECT_EQ(r.stopped_at, 4);
  EXPECT_EQ(r.text, "a ");
  // A start that does not become a stop string is sent once it cannot.
  r = Feed({"a", " lit", "ter", "!"}, {"little girl"});
  EXPECT_EQ(r.deltas, (std::vector<std::string>{"a", " ", "litter", "!"}));
  // Held-back text is sent when the output ends for another reason.
  r = Feed({"a", " little"}, {"little girl"});
  EXPECT_EQ(r.text, "a little");
  EXPECT_EQ(r.stopped_at, -1);
}

TEST(OutputProcessorTest, EarliestMatchWinsAndNothingAfterItIsSent) {
  // "bc" ends first but "abcd" starts earlier, both within the same token.
  Output r = Feed({"x", "abcdyz"}, {"bc", "abcd"});
  EXPECT_EQ(r.text, "x");
  EXPECT_EQ(r.stopped_at, 1);
  // A stop string inside another, and one that is a prefix of another.
  EXPECT_EQ(Feed({"xxabcabcd"}, {"abcd", "ca"}).text, "xxab");
  EXPECT_EQ(Feed({"q", "ab", "cd"}, {"ab", "abcd"}).text, "q");
  EXPECT_EQ(Feed({"one\n\ntwo"}, {"\n\n"}).text, "one");
}

TEST(OutputProcessorTest, StopStringsMatchTheRepairedText) {
  // The stop string holds U+FFFD: it matches where an invalid byte was repaired.
  const std::string kR(kUtf8Replacement);
  Output r = Feed({"ok", "\xFF", "then"}, {kR + "th"});
  EXPECT_EQ(r.text, "ok");
  EXPECT_EQ(r.stopped_at, 2);
}

TEST(OutputProcessorTest, NoTokenizerMeansNoText) {
  OutputProcessor p(nullptr, -1, {"a"});
  OutputProcessor::Delta d = p.Push(5, true);
  EXPECT_EQ(d.text, "");
  EXPECT_FALSE(d.stop_hit);
}

TEST(OutputProcessorTest, HoldsBackAtMostTheLongestStopString) {
  const std::string stop(4096, 'a');
  TableTokenizer tok({"a"});
  OutputProcessor p(&tok, -1, {stop, "ab"});
  std::string sent;
  for (int i = 0; i < 20000; ++i) {
    sent += p.Push(0, false).text;
    ASSERT_LE(p.held(), stop.size() - 1);
    if (i == 4094) break;  // The next 'a' would complete the stop string.
  }
  EXPECT_EQ(sent, "");
  EXPECT_EQ(p.held(), 4095u);
  OutputProcessor::Delta d = p.Push(0, false);
  EXPECT_TRUE(d.stop_hit);
  EXPECT_EQ(d.text, "");
}

// The rules as the engine applied them before the automaton: the whole text rescanned with
// std::string::find for each token, and the hold-back found by comparing suffixes.
class RescanningMatcher {
 public:
  explicit RescanningMatcher(std::vector<std::string> stop) : stop_(std::move(stop)) {}
  OutputProcessor::Delta Push(const std::string& piece, bool last) {
    text_ += piece;
    OutputProcessor::Delta d;
    size_t end = text_.size();
    for (const std::string& s : stop_) {
      if (s.empty()) continue;
      const size_t from = emitted_ >= s.size() ? emitted_ - s.size() + 1 : 0;
      const size_t pos = text_.find(s, from);
      if (pos != std::string::npos && (!d.stop_hit || pos < end)) {
        end = std::max(pos, emitted_);
        d.stop_hit = true;
      }
    }
    if (!d.stop_hit && !last) {
      for (const std::string& s : stop_) {
        if (s.empty()) continue;
        for (size_t k = std::min(s.size() - 1, text_.size()); k > 0; --k) {
          if (text_.compare(text_.size() - k, k, s, 0, k) == 0) {
            end = std::min(end, std::max(emitted_, text_.size() - k));
            break;
          }
        }
      }
    }
    d.text = text_.substr(emitted_, end - emitted_);
    emitted_ = end;
    return d;
  }

 private:
  std::vector<std::string> stop_;
  std::string text_;
  size_t emitted_ = 0;
};

TEST(OutputProcessorTest, SameDeltasAsRescanningTheWholeText) {
  std::mt19937 rng(11);
  auto word = [&](size_t max_len) {
    std::string w(1 + rng() % max_len, 'a');
    for (char& c : w) c = "abc"[rng() % 3];
    return w;
  };
  int hits = 0;
  for (int trial = 0; trial < 3000; ++trial) {
    std::vector<std::string> stop;
    for (int i = 0, n = rng() % 5; i < n; ++i) stop.push_back(rng() % 8 ? word(5) : "");
    std::vector<std::string> pieces;
    for (int i = 0, n = 1 + rng() % 12; i < n; ++i) pieces.push_back(word(4));
    TableTokenizer tok(pieces);
    OutputProcessor p(&tok, -1, stop);
    RescanningMatcher want(stop);
    for (size_t i = 0; i < pieces.size(); ++i) {
      const bool last = i + 1 == pieces.size();
      OutputProcessor::Delta got = p.Push(static_cast<TokenId>(i), last);
      OutputProcessor::Delta expected = want.Push(pieces[i], last);
      ASSERT_EQ(got.text, expected.text) << "trial " << trial << " token " << i;
      ASSERT_EQ(got.stop_hit, expected.stop_hit) << "trial " << trial << " token " << i;
      if (got.stop_hit) {
        ++hits;
        break;
      }
    }
  }
  EXPECT_GT(hits, 300);  // The comparison covered many matches, not only misses.
}

TEST(OutputProcessorTest, Stories260KByteTokensGiveValidText) {
  auto tok = LoadLlama2cTokenizer(DefaultTokenizerPath(), 512);
  ASSERT_TRUE(tok.ok()) << tok.status();
  // The byte-fallback tokens of U+2603's bytes E2 98 83: only those decode to a lone such byte.
  auto byte_token = [&](char byte) {
    for (TokenId id = 0; id < (*tok)->vocab_size(); ++id) {
      if ((*tok)->TokenBytes(-1, id) == std::string(1, byte)) return id;
    }
    return TokenId{-1};
  };
  const TokenId e2 = byte_token('\xE2'), x98 = byte_token('\x98'), x83 = byte_token('\x83');
  ASSERT_GE(std::min({e2, x98, x83}), 0);
  // 98 | E2 98 (cut by E2) | E2 98 83 | E2 98 (cut by the end).
  const std::vector<TokenId> ids = {x98, e2, x98, e2, x98, x83, e2, x98};
  OutputProcessor p(tok->get(), 1, {});
  std::string text;
  for (size_t i = 0; i < ids.size(); ++i) {
    const std::string d = p.Push(ids[i], i + 1 == ids.size()).text;
    EXPECT_TRUE(IsValidUtf8(d));
    text += d;
  }
  EXPECT_EQ(text, DecodeText(**tok, ids, 1));
  const std::string kR(kUtf8Replacement);
  EXPECT_EQ(text, kR + kR + "\xE2\x98\x83" + kR);
}

}  // namespace
}  // namespace hkv
