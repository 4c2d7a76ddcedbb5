// Guards "GPU tests find their data through an absolute path compiled in at build time": the
// data root comes from $HKV_SOURCE_DIR, else beside the executable, else above the working
// directory, and only last from the compiled-in checkout (which here never exists).

#include "common/paths.h"

#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <string>

#include "gtest/gtest.h"

namespace hkv {
namespace {

constexpr char kGone[] = "/nonexistent/checkout";

// A fresh directory tree under the test's temporary directory, removed after the test.
class SourceDirTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string templ = ::testing::TempDir() + "hkv_paths_XXXXXX";
    ASSERT_NE(mkdtemp(templ.data()), nullptr);
    root_ = templ;
  }
  void TearDown() override { std::filesystem::remove_all(root_); }
  // Creates `relative` (and its parents) under root_ and returns its full path.
  std::string MakeDirs(const std::string& relative) {
    const std::string path = root_ + "/" + relative;
    std::filesystem::create_directories(path);
    return path;
  }
  std::string root_;
};

TEST_F(SourceDirTest, BundleBesideTheExecutableWinsOverTheWorkingDirectory) {
  const std::string bundle = MakeDirs("bundle");
  MakeDirs("bundle/tests/data/hf");
  const std::string exe_dir = MakeDirs("bundle/bin");
  const std::string other = MakeDirs("other");
  MakeDirs("other/models/stories260K");
  EXPECT_EQ(FindSourceDir("", exe_dir, other, kGone), bundle);
}

TEST_F(SourceDirTest, WorkingDirectoryOrItsAncestorWhenNothingIsBesideTheExecutable) {
  const std::string exe_dir = MakeDirs("bin");
  const std::string checkout = MakeDirs("checkout");
  MakeDirs("checkout/models/stories260K");
  const std::string cwd = MakeDirs("checkout/build/tests");
  EXPECT_EQ(FindSourceDir("", exe_dir, cwd, kGone), checkout);
  EXPECT_EQ(FindSourceDir("", exe_dir, checkout, kGone), checkout);
}

TEST_F(SourceDirTest, EnvironmentFirstAndTheCompiledInPathLast) {
  const std::string exe_dir = MakeDirs("bundle/bin");
  MakeDirs("bundle/models/stories260K");
  EXPECT_EQ(FindSourceDir("/from/env", exe_dir, exe_dir, kGone), "/from/env");
  const std::string empty = MakeDirs("empty/bin");
  EXPECT_EQ(FindSourceDir("", empty, empty, kGone), kGone);
}

TEST(SourceDirEnvTest, HkvSourceDirSetsTheDefaultModelAndSharedData) {
  setenv("HKV_SOURCE_DIR", "/opt/hkv-data", 1);
  unsetenv("HKV_SHARED_DIR");
  EXPECT_EQ(SourceDir(), "/opt/hkv-data");
  EXPECT_EQ(DefaultModelPath(), "/opt/hkv-data/models/stories260K/stories260K.bin");
  EXPECT_EQ(DefaultTokenizerPath(), "/opt/hkv-data/models/stories260K/tok512.bin");
  EXPECT_EQ(SharedDataDir(), "/opt/hkv-data/../shared");
  unsetenv("HKV_SOURCE_DIR");
  // Unset, this test binary (bin/ of a build inside the checkout) finds the checkout.
  struct stat st;
  EXPECT_EQ(stat(DefaultModelPath().c_str(), &st), 0) << DefaultModelPath();
}

TEST(SourceDirEnvTest, ExecutableDirIsThisTestsDirectory) {
  const std::string dir = ExecutableDir();
  ASSERT_FALSE(dir.empty());
  struct stat st;
  EXPECT_EQ(stat((dir + "/paths_test").c_str(), &st), 0) << dir;
}

}  // namespace
}  // namespace hkv
