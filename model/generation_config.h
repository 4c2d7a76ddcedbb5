#pragma once
// The sampling defaults a Hugging Face model ships in generation_config.json: `temperature`,
// `top_k` and `top_p` become what a request that leaves them unset gets, as vLLM's
// `--generation-config auto` does (vLLM, like this, ignores `do_sample`). Fields that are
// absent keep the built-in defaults (greedy, no top-k, no top-p).
//
// Thread-safe: pure functions; called once at start-up.

#include <string>

#include "absl/status/statusor.h"
#include "common/sampling_params.h"

namespace hkv {

// Parses a generation_config.json text. INVALID_ARGUMENT naming the field when one is not a
// number in range (temperature >= 0 and finite, top_k >= 0, 0 < top_p <= 1).
absl::StatusOr<SamplingDefaults> ParseSamplingDefaults(const std::string& generation_config_json);

// Reads `model_dir`/generation_config.json; the built-in defaults when the file is missing.
absl::StatusOr<SamplingDefaults> LoadSamplingDefaults(const std::string& model_dir);

}  // namespace hkv
