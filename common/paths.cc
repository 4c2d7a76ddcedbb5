#include "common/paths.h"

#include <limits.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>

namespace hkv {
namespace {

bool IsDirectory(const std::string& path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

// The nearest of `dir` and its ancestors that holds the repository's data; empty when none.
std::string DataRootAtOrAbove(std::string dir) {
  while (!dir.empty()) {
    if (IsDirectory(dir + "/models/stories260K") || IsDirectory(dir + "/tests/data")) return dir;
    const size_t slash = dir.find_last_of('/');
    if (slash == std::string::npos || dir == "/") break;
    dir = slash == 0 ? "/" : dir.substr(0, slash);
  }
  return "";
}

std::string WorkingDir() {
  char buffer[PATH_MAX];
  return getcwd(buffer, sizeof(buffer)) != nullptr ? std::string(buffer) : std::string();
}

std::string Getenv(const char* name) {
  const char* value = std::getenv(name);
  return value != nullptr ? std::string(value) : std::string();
}

}  // namespace

std::string FindSourceDir(const std::string& env, const std::string& exe_dir,
                          const std::string& cwd, const std::string& compiled_in) {
  if (!env.empty()) return env;
  for (const std::string* start : {&exe_dir, &cwd}) {
    std::string root = DataRootAtOrAbove(*start);
    if (!root.empty()) return root;
  }
  return compiled_in;
}

std::string ExecutableDir() {
  char buffer[PATH_MAX];
  const ssize_t n = readlink("/proc/self/exe", buffer, sizeof(buffer) - 1);
  if (n <= 0) return "";
  const std::string exe(buffer, n);
  const size_t slash = exe.find_last_of('/');
  return slash == std::string::npos ? "" : exe.substr(0, slash == 0 ? 1 : slash);
}

std::string SourceDir() {
  return FindSourceDir(Getenv("HKV_SOURCE_DIR"), ExecutableDir(), WorkingDir(), HKV_SOURCE_DIR);
}

std::string SharedDataDir() {
  const std::string env = Getenv("HKV_SHARED_DIR");
  if (!env.empty()) return env;
  return SourceDir() + "/../shared";
}

std::string DefaultModelPath() { return SourceDir() + "/models/stories260K/stories260K.bin"; }
std::string DefaultTokenizerPath() { return SourceDir() + "/models/stories260K/tok512.bin"; }

}  // namespace hkv
