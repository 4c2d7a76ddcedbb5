#pragma once
// Loads a Hugging Face Llama / Mistral / Qwen2 checkpoint directory (config.json +
// safetensors) into fp32 host weights, and dispatches between checkpoint formats.
// Thread-safe (pure functions of the files).

#include <string>

#include "absl/status/statusor.h"
#include "model/model_config.h"

namespace hkv {

// INVALID_ARGUMENT naming the problem: missing tensors (all of them), extra tensors, wrong shapes
// (expected vs found), unsupported dtype or architecture, corrupt files.
absl::StatusOr<Model> LoadHfModel(const std::string& dir);

// A directory with config.json -> LoadHfModel; anything else -> llama2.c checkpoint.
absl::StatusOr<Model> LoadModel(const std::string& path);

}  // namespace hkv
