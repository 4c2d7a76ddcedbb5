#pragma once
// Where hkv finds its data. Thread-safe (reads the environment only).

#include <string>

namespace hkv {

// $HKV_SHARED_DIR when set, else `../shared` beside the repository root.
std::string SharedDataDir();

// The repository root this binary was built from (for the embedded default model).
std::string SourceDir();

// The embedded default checkpoint and tokenizer (models/stories260K in the repository).
std::string DefaultModelPath();
std::string DefaultTokenizerPath();

}  // namespace hkv
