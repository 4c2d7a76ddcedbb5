#pragma once
// Where hkv finds its data. Thread-safe (reads the environment and the file system only).

#include <string>

namespace hkv {

// $HKV_SHARED_DIR when set, else `../shared` beside the repository root.
std::string SharedDataDir();

// The root of the repository's data (models/ with the embedded default model, tests/data/,
// bench/configs/), so that a binary carried away from its checkout still finds it. The first of:
//   1. $HKV_SOURCE_DIR, when set and non-empty;
//   2. the nearest directory at or above this executable's that holds models/stories260K or
//      tests/data (a build tree inside a checkout; a bundle of bench/pack_gpu_bundle.sh, whose
//      bin/ sits beside the models/ and tests/ it carries);
//   3. the same at or above the working directory;
//   4. the checkout this binary was built from (compiled in).
std::string SourceDir();

// Steps 2-4 of SourceDir() for the given directories (and step 1 when `env` is non-empty).
std::string FindSourceDir(const std::string& env, const std::string& exe_dir,
                          const std::string& cwd, const std::string& compiled_in);

// The directory holding the running executable; empty when /proc/self/exe cannot be read.
std::string ExecutableDir();

// The embedded default checkpoint and tokenizer (models/stories260K under SourceDir()).
std::string DefaultModelPath();
std::string DefaultTokenizerPath();

}  // namespace hkv
