#include "common/paths.h"

#include <cstdlib>

namespace hkv {

std::string SourceDir() { return HKV_SOURCE_DIR; }

std::string SharedDataDir() {
  const char* env = std::getenv("HKV_SHARED_DIR");
  if (env != nullptr && env[0] != '\0') return env;
  return SourceDir() + "/../shared";
}

std::string DefaultModelPath() { return SourceDir() + "/models/stories260K/stories260K.bin"; }
std::string DefaultTokenizerPath() { return SourceDir() + "/models/stories260K/tok512.bin"; }

}  // namespace hkv
