#pragma once
// RoPE tables: the inverse frequencies a model's rotary embedding uses, computed once on the
// host and shared by the CPU forward pass and the CUDA worker (which uploads them). Pure
// function; thread-safe.

#include <vector>

#include "model/model_config.h"

namespace hkv {

// RoPE inverse frequencies [head_dim / 2] for the config (theta, llama3 scaling).
std::vector<float> RopeInvFreq(const ModelConfig& config);

}  // namespace hkv
