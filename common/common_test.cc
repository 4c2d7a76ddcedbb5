#include <cstdio>
#include <fstream>
#include <string>

#include "absl/status/statusor.h"
#include "common/batch.h"
#include "common/exit_watchdog.h"
#include "common/mapped_file.h"
#include "common/paths.h"
#include "common/sampling_params.h"
#include "common/status_macros.h"
#include "gtest/gtest.h"

namespace hkv {
namespace {

absl::StatusOr<int> Half(int x) {
  if (x % 2 != 0) return absl::InvalidArgumentError("odd");
  return x / 2;
}

absl::StatusOr<int> Quarter(int x) {
  HKV_ASSIGN_OR_RETURN(int h, Half(x));
  HKV_ASSIGN_OR_RETURN(int q, Half(h));
  return q;
}

absl::Status CheckEven(int x) {
  HKV_RETURN_IF_ERROR(Half(x).status());
  return absl::OkStatus();
}

TEST(StatusMacrosTest, PropagatesErrorsAndValues) {
  EXPECT_EQ(*Quarter(8), 2);
  EXPECT_EQ(Quarter(6).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(CheckEven(4).ok());
  EXPECT_EQ(CheckEven(3).code(), absl::StatusCode::kInvalidArgument);
}

TEST(MappedFileTest, MapsContentsAndReportsMissingFile) {
  const std::string path = ::testing::TempDir() + "/mapped_file_test.bin";
  { std::ofstream(path, std::ios::binary) << "hello"; }
  auto file = MappedFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  ASSERT_EQ(file->size(), 5u);
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(file->data()), 5), "hello");
  MappedFile moved = std::move(*file);
  EXPECT_EQ(moved.size(), 5u);
  EXPECT_EQ(MappedFile::Open(path + ".missing").status().code(), absl::StatusCode::kNotFound);
  std::remove(path.c_str());
}

TEST(SamplingParamsTest, RejectsBadValues) {
  SamplingParams p;
  EXPECT_TRUE(ValidateSamplingParams(p).ok());
  p.temperature = -1;
  EXPECT_EQ(ValidateSamplingParams(p).code(), absl::StatusCode::kInvalidArgument);
  p = {};
  p.top_p = 0;
  EXPECT_EQ(ValidateSamplingParams(p).code(), absl::StatusCode::kInvalidArgument);
  p = {};
  p.top_k = -3;
  EXPECT_EQ(ValidateSamplingParams(p).code(), absl::StatusCode::kInvalidArgument);
  p = {};
  p.max_tokens = 0;
  EXPECT_EQ(ValidateSamplingParams(p).code(), absl::StatusCode::kInvalidArgument);
}

TEST(BatchTest, RowIndexIsSeqLayerHeadMajor) {
  Batch b;
  b.num_layers = 3;
  b.num_kv_heads = 4;
  b.seqs.resize(2);
  EXPECT_EQ(b.num_rows(), 24);
  EXPECT_EQ(b.row(1, 2, 3), 23);
  EXPECT_EQ(b.row(0, 1, 0), 4);
}

TEST(PathsTest, SharedDirHonoursEnvironment) {
  setenv("HKV_SHARED_DIR", "/tmp/somewhere", 1);
  EXPECT_EQ(SharedDataDir(), "/tmp/somewhere");
  unsetenv("HKV_SHARED_DIR");
  EXPECT_NE(SharedDataDir().find("../shared"), std::string::npos);
}

TEST(ExitWatchdogTest, EndsTheProcessWithTheCodeOnceTheDelayPassed) {
  EXPECT_EXIT(
      {
        ExitAfter(absl::Milliseconds(50), 7, "stuck shutting down");
        ExitAfter(absl::Milliseconds(1), 9, "ignored: the first call wins");
        absl::SleepFor(absl::Seconds(30));  // a shutdown that never finishes
      },
      ::testing::ExitedWithCode(7), "exiting with status 7: stuck shutting down");
}

}  // namespace
}  // namespace hkv
