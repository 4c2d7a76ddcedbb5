#pragma once
// Deterministic random weights for any ModelConfig: benchmarks of large shapes (e.g.
// Llama-3-8B's config) without checkpoint files, and tests of backends against each other.
// Thread-safe (pure function).

#include <cstdint>

#include "absl/status/statusor.h"
#include "model/model_config.h"

namespace hkv {

// Weights ~ U(-a, a) with a = 1/sqrt(fan_in) (activations stay O(1) through the layers), norms
// 1, the same for the same (config, seed). INVALID_ARGUMENT for an invalid config.
absl::StatusOr<Model> MakeDummyModel(const ModelConfig& config, uint64_t seed);

}  // namespace hkv
