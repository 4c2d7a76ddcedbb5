#include "common/quote.h"

#include <string>

#include "gtest/gtest.h"

namespace hkv {
namespace {

TEST(QuoteForErrorTest, ShortPrintableValuesAreQuotedWhole) {
  EXPECT_EQ(QuoteForError("snapkv"), "\"snapkv\"");
  EXPECT_EQ(QuoteForError(""), "\"\"");
}

TEST(QuoteForErrorTest, EscapesQuotesBackslashesAndNonPrintableBytes) {
  EXPECT_EQ(QuoteForError("a\"b\\c"), R"("a\"b\\c")");
  EXPECT_EQ(QuoteForError(std::string("x\n\t\0\x7f\xc3\xa9", 7)), R"("x\n\t\x00\x7f\xc3\xa9")");
}

TEST(QuoteForErrorTest, LongValuesAreCutAndSayTheirSize) {
  const std::string quoted = QuoteForError(std::string(20000, 'p'));
  EXPECT_EQ(quoted, "\"" + std::string(kQuotedValueMaxChars, 'p') + "\"... (20000 bytes)");
  // A value exactly at the bound is not cut.
  EXPECT_EQ(QuoteForError(std::string(kQuotedValueMaxChars, 'q')),
            "\"" + std::string(kQuotedValueMaxChars, 'q') + "\"");
}

TEST(QuoteForErrorTest, EscapesCountTowardsTheBound) {
  // Every byte escapes to 4 characters: 16 of them fill the 64 characters.
  const std::string quoted = QuoteForError(std::string(1000, '\x01'));
  std::string want = "\"";
  for (size_t i = 0; i < kQuotedValueMaxChars / 4; ++i) want += "\\x01";
  want += "\"... (1000 bytes)";
  EXPECT_EQ(quoted, want);
  EXPECT_LE(quoted.size(), kQuotedValueMaxChars + 40);
}

}  // namespace
}  // namespace hkv
