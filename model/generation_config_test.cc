#include "model/generation_config.h"

#include <stdlib.h>
#include <unistd.h>

#include <fstream>

#include "gtest/gtest.h"

namespace hkv {
namespace {

TEST(GenerationConfigTest, FieldsBecomeTheDefaultsAndAbsentOnesKeepTheBuiltIns) {
  auto d = ParseSamplingDefaults(
      R"({"do_sample": true, "temperature": 0.7, "top_p": 0.8, "top_k": 20, "bos_token_id": 1})");
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_FLOAT_EQ(d->temperature, 0.7f);
  EXPECT_FLOAT_EQ(d->top_p, 0.8f);
  EXPECT_EQ(d->top_k, 20);
  d = ParseSamplingDefaults(R"({"temperature": 0.6, "top_k": null})");
  ASSERT_TRUE(d.ok());
  EXPECT_FLOAT_EQ(d->temperature, 0.6f);
  EXPECT_EQ(d->top_k, 0);
  EXPECT_FLOAT_EQ(d->top_p, 1.0f);
}

TEST(GenerationConfigTest, OutOfRangeValuesNameTheField) {
  for (const char* bad :
       {R"({"temperature": -1})", R"({"temperature": "hot"})", R"({"top_p": 0})",
        R"({"top_p": 1.5})", R"({"top_k": -5})", R"({"top_k": 2.5})", "[1]", "not json"}) {
    SCOPED_TRACE(bad);
    EXPECT_EQ(ParseSamplingDefaults(bad).status().code(), absl::StatusCode::kInvalidArgument);
  }
  EXPECT_NE(ParseSamplingDefaults(R"({"top_p": 2})").status().message().find("top_p"),
            std::string::npos);
}

TEST(GenerationConfigTest, MissingFileMeansBuiltInDefaults) {
  char dir[] = "/tmp/generation_config_test_XXXXXX";
  ASSERT_NE(mkdtemp(dir), nullptr);
  auto d = LoadSamplingDefaults(dir);
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(d->temperature, 0.0f);
  const std::string path = std::string(dir) + "/generation_config.json";
  std::ofstream(path) << R"({"temperature": 0.9, "top_k": 7})";
  d = LoadSamplingDefaults(dir);
  ASSERT_TRUE(d.ok());
  EXPECT_FLOAT_EQ(d->temperature, 0.9f);
  EXPECT_EQ(d->top_k, 7);
  unlink(path.c_str());
  rmdir(dir);
}

}  // namespace
}  // namespace hkv
