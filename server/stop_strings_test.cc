// StopStrings (the automaton's states on known texts) and CheckStopLimits (each limit at and
// past its value).

#include "server/stop_strings.h"

#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace hkv {
namespace {

using ::testing::HasSubstr;

// Runs `text` through the automaton; returns (depth, match) after each byte.
std::vector<std::pair<int32_t, int32_t>> Trace(const StopStrings& stops, const std::string& text) {
  std::vector<std::pair<int32_t, int32_t>> out;
  StopStrings::State s = StopStrings::kStart;
  for (char c : text) {
    s = stops.Next(s, static_cast<uint8_t>(c));
    out.emplace_back(stops.depth(s), stops.match(s));
  }
  return out;
}

TEST(StopStringsTest, StatesTrackTheLongestPartialMatchAndTheLongestMatch) {
  const std::vector<std::string> stop = {"he", "she", "his", "hers", ""};
  const StopStrings stops(stop);
  EXPECT_FALSE(stops.empty());
  // u s h e r s: "she" and "he" end at 'e' (the longest, "she", is reported); "hers" at 's'.
  EXPECT_EQ(Trace(stops, "ushers"), (std::vector<std::pair<int32_t, int32_t>>{
                                        {0, 0}, {1, 0}, {2, 0}, {3, 3}, {3, 0}, {4, 4}}));
  // A failed partial match falls back to the longest suffix that still is one.
  EXPECT_EQ(Trace(stops, "hix"),
            (std::vector<std::pair<int32_t, int32_t>>{{1, 0}, {2, 0}, {0, 0}}));
}

TEST(StopStringsTest, EmptyListsAndEmptyStringsNeverMatch) {
  EXPECT_TRUE(StopStrings().empty());
  const std::vector<std::string> only_empty = {"", ""};
  EXPECT_TRUE(StopStrings(only_empty).empty());
}

TEST(StopStringsTest, BytesAboveAsciiAreOrdinaryBytes) {
  const std::vector<std::string> stop = {"\xE2\x98\x83", "\xFF\xFE"};
  const StopStrings stops(stop);
  EXPECT_EQ(Trace(stops, "a\xE2\x98\x83").back(), std::make_pair(3, 3));
  EXPECT_EQ(Trace(stops, "\xE2\x98\xE2").back(), std::make_pair(1, 0));
}

TEST(StopLimitsTest, EachLimitHoldsAtItsValueAndNamesItsFlagPastIt) {
  const StopLimits limits;  // 64 strings, 4096 bytes, 256 ids.
  EXPECT_TRUE(CheckStopLimits(limits, 64, 4096, 256).ok());
  const absl::Status strings = CheckStopLimits(limits, 65, 0, 0);
  EXPECT_EQ(strings.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(strings.message(), HasSubstr("--max-stop-strings"));
  const absl::Status bytes = CheckStopLimits(limits, 1, 4097, 0);
  EXPECT_EQ(bytes.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(bytes.message(), HasSubstr("--max-stop-bytes"));
  const absl::Status ids = CheckStopLimits(limits, 0, 0, 257);
  EXPECT_EQ(ids.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(ids.message(), HasSubstr("--max-stop-token-ids"));
  // The container form counts bytes too.
  const std::vector<std::string> two = {std::string(4000, 'a'), std::string(97, 'b')};
  EXPECT_THAT(CheckStopLimits(limits, two, 0).message(), HasSubstr("--max-stop-bytes"));
  const std::vector<std::string> many(65, "x");
  EXPECT_THAT(CheckStopLimits(limits, many, 0).message(), HasSubstr("--max-stop-strings"));
}

}  // namespace
}  // namespace hkv
