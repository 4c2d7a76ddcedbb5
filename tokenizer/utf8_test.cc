// UTF-8 repair: the Unicode "maximal subpart" replacement on hand-picked ill-formed sequences,
// then against an independent reference built from the UTF-8 encoder, on every 1- and 2-byte
// string, every 3- and 4-byte string over the boundary bytes, and random longer ones, each
// also streamed at every split point.

#include "tokenizer/utf8.h"

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "gtest/gtest.h"

namespace hkv {
namespace {

const std::string kR(kUtf8Replacement);

// Pushes `bytes` in pieces cut at `cuts` (ascending offsets), then flushes; checks that every
// piece returned is valid UTF-8.
std::string Streamed(std::string_view bytes, const std::vector<size_t>& cuts) {
  Utf8Sanitizer s;
  std::string out;
  size_t from = 0;
  for (size_t cut : cuts) {
    std::string piece = s.Push(bytes.substr(from, cut - from));
    EXPECT_TRUE(IsValidUtf8(piece));
    out += piece;
    from = cut;
  }
  std::string piece = s.Push(bytes.substr(from));
  EXPECT_TRUE(IsValidUtf8(piece));
  out += piece;
  out += s.Flush();
  EXPECT_EQ(s.held(), 0u);
  return out;
}

// The reference: every well-formed sequence comes from encoding a scalar value (not a
// surrogate, at most U+10FFFF); a maximal subpart is the longest prefix of one of them.
class Reference {
 public:
  Reference() {
    for (uint32_t cp = 0; cp <= 0x10FFFF; ++cp) {
      if (cp >= 0xD800 && cp <= 0xDFFF) continue;
      const std::string e = Encode(cp);
      complete_.insert(Key(e));
      for (size_t k = 1; k < e.size(); ++k) prefixes_.insert(Key(e.substr(0, k)));
    }
  }
  std::string Repair(std::string_view s) const {
    std::string out;
    size_t i = 0;
    while (i < s.size()) {
      size_t k = std::min<size_t>(4, s.size() - i);
      for (; k > 0; --k) {
        const uint64_t p = Key(s.substr(i, k));
        if (complete_.contains(p) || prefixes_.contains(p)) break;
      }
      if (k > 0 && complete_.contains(Key(s.substr(i, k)))) {
        out.append(s.substr(i, k));
      } else {
        out += kR;
      }
      i += std::max<size_t>(k, 1);
    }
    return out;
  }

 private:
  // Up to 4 bytes and their count in one integer.
  static uint64_t Key(std::string_view bytes) {
    uint64_t key = bytes.size();
    for (char b : bytes) key = (key << 8) | static_cast<uint8_t>(b);
    return key;
  }
  static std::string Encode(uint32_t cp) {
    std::string e;
    if (cp < 0x80) {
      e += static_cast<char>(cp);
    } else if (cp < 0x800) {
      e += static_cast<char>(0xC0 | (cp >> 6));
      e += static_cast<char>(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
      e += static_cast<char>(0xE0 | (cp >> 12));
      e += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      e += static_cast<char>(0x80 | (cp & 0x3F));
    } else {
      e += static_cast<char>(0xF0 | (cp >> 18));
      e += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
      e += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      e += static_cast<char>(0x80 | (cp & 0x3F));
    }
    return e;
  }
  absl::flat_hash_set<uint64_t> complete_, prefixes_;
};

const Reference& Ref() {
  static const Reference* ref = new Reference();
  return *ref;
}

// Checks `bytes` against the reference, whole and streamed at every single split point.
void Check(const std::string& bytes) {
  const std::string want = Ref().Repair(bytes);
  ASSERT_EQ(SanitizeUtf8(bytes), want) << testing::PrintToString(bytes);
  ASSERT_EQ(IsValidUtf8(bytes), want == bytes) << testing::PrintToString(bytes);
  for (size_t cut = 0; cut <= bytes.size(); ++cut) {
    ASSERT_EQ(Streamed(bytes, {cut}), want) << testing::PrintToString(bytes) << " cut " << cut;
  }
}

TEST(Utf8Test, WellFormedTextIsUnchanged) {
  for (const std::string& s :
       std::vector<std::string>{"", "plain ascii", "caf\xC3\xA9", "\xE2\x98\x83 snow",
                                "\xF0\x9F\x98\x80", "\xEF\xBF\xBD", "\xF4\x8F\xBF\xBF",
                                "\xED\x9F\xBF", "\xEE\x80\x80", std::string("nul\0byte", 8)}) {
    EXPECT_TRUE(IsValidUtf8(s)) << s;
    EXPECT_EQ(SanitizeUtf8(s), s);
    EXPECT_EQ(Streamed(s, {}), s);
  }
}

TEST(Utf8Test, EachMaximalSubpartBecomesOneReplacement) {
  struct Case {
    std::string in, out;
  };
  const Case cases[] = {
      {"\x80", kR},                             // lone continuation byte
      {"\xBF\x80", kR + kR},                    // two of them
      {"\xC0\xAF", kR + kR},                    // overlong '/', C0 never starts a character
      {"\xC1\xBF", kR + kR},                    // overlong, C1 likewise
      {"\xE0\x80\xAF", kR + kR + kR},           // overlong 3-byte: E0 needs A0..BF next
      {"\xF0\x80\x80\xAF", kR + kR + kR + kR},  // overlong 4-byte: F0 needs 90..BF next
      {"\xED\xA0\x80", kR + kR + kR},           // surrogate U+D800
      {"\xED\xBF\xBF", kR + kR + kR},           // surrogate U+DFFF
      {"\xF4\x90\x80\x80", kR + kR + kR + kR},  // U+110000, past the last code point
      {"\xF5\x80", kR + kR},                    // F5..FF never appear
      {"\xFF", kR},
      {"\xFE\xFF", kR + kR},
      {"\xE2\x98", kR},  // truncated at the end: one replacement
      {"\xF0\x9F\x98", kR},
      {"\xE2\x98x", kR + "x"},  // truncated mid-stream
      {"\xF0\x9F\x98\xE2\x98\x83", kR + "\xE2\x98\x83"},
      {"a\xC3", "a" + kR},
      {"\xC3\xC3\xA9", kR + "\xC3\xA9"},
      {"\xE1\x80\xE2\xF0\x91\x92\xF1\xBF\x41", kR + kR + kR + kR + "A"},  // Unicode's example
  };
  for (const Case& c : cases) {
    EXPECT_EQ(SanitizeUtf8(c.in), c.out) << testing::PrintToString(c.in);
    EXPECT_FALSE(IsValidUtf8(c.in)) << testing::PrintToString(c.in);
    EXPECT_TRUE(IsValidUtf8(SanitizeUtf8(c.in)));
  }
}

TEST(Utf8Test, StreamHoldsBackOnlyAnIncompleteCharacter) {
  Utf8Sanitizer s;
  EXPECT_EQ(s.Push("ab\xE2"), "ab");
  EXPECT_EQ(s.held(), 1u);
  EXPECT_EQ(s.Push("\x98"), "");
  EXPECT_EQ(s.held(), 2u);
  EXPECT_EQ(s.Push("\x83"), "\xE2\x98\x83");
  EXPECT_EQ(s.held(), 0u);
  // An invalid byte is replaced at once: nothing could make it valid.
  EXPECT_EQ(s.Push("\xFF"), kR);
  EXPECT_EQ(s.held(), 0u);
  // A held prefix broken by the next byte is one replacement, then that byte is read afresh.
  EXPECT_EQ(s.Push("\xF0\x9F"), "");
  EXPECT_EQ(s.Push("\xC3\xA9"), kR + "\xC3\xA9");
  // Truncated at the end of the stream.
  EXPECT_EQ(s.Push("\xF0\x9F\x98"), "");
  EXPECT_EQ(s.Flush(), kR);
  EXPECT_EQ(s.Flush(), "");
  // Split over many pushes, byte by byte.
  const std::string text = "x\xF0\x9F\x98\x80y\xE2\x98\xC3";
  std::vector<size_t> every;
  for (size_t i = 1; i < text.size(); ++i) every.push_back(i);
  EXPECT_EQ(Streamed(text, every), SanitizeUtf8(text));
  EXPECT_EQ(SanitizeUtf8(text), "x\xF0\x9F\x98\x80y" + kR + kR);
}

TEST(Utf8Test, EveryOneAndTwoByteStringMatchesTheReference) {
  for (int a = 0; a < 256; ++a) {
    Check(std::string(1, static_cast<char>(a)));
    for (int b = 0; b < 256; ++b) {
      const std::string s = {static_cast<char>(a), static_cast<char>(b)};
      const std::string want = Ref().Repair(s);
      ASSERT_EQ(SanitizeUtf8(s), want) << testing::PrintToString(s);
      ASSERT_EQ(Streamed(s, {1}), want) << testing::PrintToString(s);
    }
  }
}

// Bytes at the edges of Table 3-7's ranges, and one ASCII letter.
const uint8_t kEdges[] = {0x00, 0x41, 0x7F, 0x80, 0x8F, 0x90, 0x9F, 0xA0, 0xBF,
                          0xC0, 0xC1, 0xC2, 0xDF, 0xE0, 0xE1, 0xEC, 0xED, 0xEE,
                          0xEF, 0xF0, 0xF1, 0xF3, 0xF4, 0xF5, 0xFF};

TEST(Utf8Test, EveryThreeAndFourByteStringOfEdgeBytesMatchesTheReference) {
  for (uint8_t a : kEdges) {
    for (uint8_t b : kEdges) {
      for (uint8_t c : kEdges) {
        const std::string s3 = {static_cast<char>(a), static_cast<char>(b), static_cast<char>(c)};
        Check(s3);
        for (uint8_t d : kEdges) Check(s3 + static_cast<char>(d));
      }
    }
  }
}

TEST(Utf8Test, RandomStringsSplitAnywhereMatchTheReference) {
  std::mt19937 rng(7);
  for (int n = 0; n < 20000; ++n) {
    std::string s(1 + rng() % 12, '\0');
    for (char& ch : s) {
      ch = static_cast<char>(rng() % 2 ? kEdges[rng() % std::size(kEdges)] : rng() % 256);
    }
    std::vector<size_t> cuts;
    for (size_t i = 1; i < s.size(); ++i) {
      if (rng() % 3 == 0) cuts.push_back(i);
    }
    const std::string want = Ref().Repair(s);
    ASSERT_EQ(SanitizeUtf8(s), want) << testing::PrintToString(s);
    ASSERT_EQ(Streamed(s, cuts), want) << testing::PrintToString(s);
  }
}

}  // namespace
}  // namespace hkv
