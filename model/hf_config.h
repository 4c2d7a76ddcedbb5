#pragma once
// Reads a Hugging Face `config.json` into a ModelConfig for the architectures hkv serves:
// LlamaForCausalLM (Llama 2/3/3.1, rope_scaling "llama3"), MistralForCausalLM (sliding_window is
// read but not applied: prompts are assumed shorter than the window) and Qwen2ForCausalLM (q/k/v
// biases). Hugging Face checkpoints use RoPE's rotate-half pairing. Thread-safe (pure).

#include <string>

#include "absl/status/statusor.h"
#include "model/model_config.h"

namespace hkv {

// `path` is a model directory (its config.json is read) or a config.json file. NOT_FOUND when
// missing; INVALID_ARGUMENT naming the field for malformed JSON, missing or wrong-typed fields,
// or an unsupported architecture.
absl::StatusOr<ModelConfig> LoadHfConfig(const std::string& path);

// Same, from the JSON text; `source` names it in errors.
absl::StatusOr<ModelConfig> ParseHfConfig(const std::string& json_text, const std::string& source);

}  // namespace hkv
