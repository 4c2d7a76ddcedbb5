// Log line formats (text and json), level and format parsing, and the constant-time compare.

#include "common/logging.h"

#include "common/constant_time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace hkv {
namespace {

using ::testing::HasSubstr;
using ::testing::MatchesRegex;

TEST(LoggingTest, TextLineHasLevelSourceMessageAndFields) {
  const std::string line =
      FormatLogLine(LogFormat::kText, LogSeverity::kWarning, "/a/b/engine.cc", 42, "hello",
                    {{"id", "abc", false}, {"n", "7", true}, {"why", "two words", false}});
  EXPECT_THAT(line, MatchesRegex(R"(W[0-9]{4} [0-9:.]+ engine\.cc:42\] hello .*)"));
  EXPECT_THAT(line, HasSubstr(" id=abc n=7 why=\"two words\""));
}

TEST(LoggingTest, JsonLineIsOneObjectWithTypedFields) {
  const std::string line =
      FormatLogLine(LogFormat::kJson, LogSeverity::kInfo, "x/request_log.cc", 9, "say \"hi\"\n",
                    {{"request_id", "r\t1", false}, {"prompt_tokens", "5", true}});
  const nlohmann::json j = nlohmann::json::parse(line);
  EXPECT_EQ(j["level"], "INFO");
  EXPECT_EQ(j["src"], "request_log.cc:9");
  EXPECT_EQ(j["msg"], "say \"hi\"\n");
  EXPECT_EQ(j["request_id"], "r\t1");
  EXPECT_EQ(j["prompt_tokens"], 5);
  EXPECT_THAT(j["ts"].get<std::string>(), MatchesRegex(R"([0-9-]+T[0-9:.]+Z)"));
  EXPECT_EQ(line.find('\n'), std::string::npos) << "one line per record";
}

TEST(LoggingTest, ParsesLevelsAndFormats) {
  EXPECT_EQ(*ParseLogSeverity("warning"), LogSeverity::kWarning);
  EXPECT_EQ(*ParseLogSeverity("ERROR"), LogSeverity::kError);
  EXPECT_EQ(ParseLogSeverity("debug").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(*ParseLogFormat("json"), LogFormat::kJson);
  EXPECT_EQ(ParseLogFormat("xml").status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(ConstantTimeTest, EqualsOnlyForEqualStrings) {
  EXPECT_TRUE(ConstantTimeEquals("secret-token", "secret-token"));
  EXPECT_TRUE(ConstantTimeEquals("", ""));
  EXPECT_FALSE(ConstantTimeEquals("secret-token", "secret-tokem"));
  EXPECT_FALSE(ConstantTimeEquals("secret", "secret-token"));
  EXPECT_FALSE(ConstantTimeEquals("secret-token", ""));
  EXPECT_FALSE(ConstantTimeEquals(std::string_view("a\0b", 3), std::string_view("a\0c", 3)));
}

}  // namespace
}  // namespace hkv
