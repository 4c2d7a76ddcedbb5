// Guards "a carried bundle run from another directory reads the checkout it was built in": the
// hkv binary placed in a bundle's bin/, beside the models/ it carries, and run from elsewhere
// loads the bundle's default model, not the compiled-in checkout's; HKV_SOURCE_DIR overrides.

#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>

#include "common/paths.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace hkv {
namespace {

namespace fs = std::filesystem;

// A bundle laid out as bench/pack_gpu_bundle.sh unpacks one: bin/hkv, models/stories260K/.
class RelocatedBundleTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string templ = ::testing::TempDir() + "hkv_bundle_XXXXXX";
    ASSERT_NE(mkdtemp(templ.data()), nullptr);
    bundle_ = templ;
    fs::create_directories(bundle_ + "/bin");
    fs::create_directories(bundle_ + "/models");
    // A hard link where the file system allows it (the binary is large), else a copy.
    std::error_code error;
    fs::create_hard_link(HKV_BINARY, bundle_ + "/bin/hkv", error);
    if (error) fs::copy_file(HKV_BINARY, bundle_ + "/bin/hkv");
    fs::copy(SourceDir() + "/models/stories260K", bundle_ + "/models/stories260K");
  }
  void TearDown() override { fs::remove_all(bundle_); }

  // Runs `env hkv args` from the file system root and returns its stdout; `status` gets the
  // exit code.
  std::string RunBundled(const std::string& env, const std::string& args, int* status) {
    const std::string command = "cd / && env -u HKV_SOURCE_DIR " + env + " " + bundle_ +
                                "/bin/hkv " + args + " 2>/dev/null </dev/null";
    FILE* pipe = popen(command.c_str(), "r");
    std::string out;
    char buffer[4096];
    size_t n;
    while ((n = fread(buffer, 1, sizeof(buffer), pipe)) > 0) out.append(buffer, n);
    const int raw = pclose(pipe);
    *status = WIFEXITED(raw) ? WEXITSTATUS(raw) : -1;
    return out;
  }

  std::string bundle_;
};

TEST_F(RelocatedBundleTest, DefaultModelIsTheOneBesideTheBinary) {
  int status = 0;
  const std::string out = RunBundled("", "serve --print-config", &status);
  ASSERT_EQ(status, 0) << out;
  const nlohmann::json config = nlohmann::json::parse(out);
  EXPECT_EQ(config["model"], bundle_ + "/models/stories260K/stories260K.bin");
  EXPECT_EQ(config["tokenizer"], bundle_ + "/models/stories260K/tok512.bin");
  // And it generates from there.
  const std::string generated =
      RunBundled("", "generate --prompt-ids 1 --max-tokens 4 --temperature 0 --json", &status);
  ASSERT_EQ(status, 0) << generated;
  EXPECT_EQ(nlohmann::json::parse(generated)["output_ids"].size(), 4u);
}

TEST_F(RelocatedBundleTest, HkvSourceDirOverridesTheLookup) {
  int status = 0;
  const std::string out = RunBundled("HKV_SOURCE_DIR=/elsewhere", "serve --print-config", &status);
  ASSERT_EQ(status, 0) << out;
  EXPECT_EQ(nlohmann::json::parse(out)["model"], "/elsewhere/models/stories260K/stories260K.bin");
}

}  // namespace
}  // namespace hkv
