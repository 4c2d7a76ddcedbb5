#pragma once
// How a request picks its next token, and when it stops. Plain data; validated by
// ValidateSamplingParams. The scheduler's Request keeps a request's SamplingParams; each step
// carries only its StepSampling, what a worker reads to sample.

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "common/ids.h"

namespace hkv {

struct SamplingParams {
  float temperature = 0.0f;  // 0 means greedy.
  int32_t top_k = 0;         // 0 means no top-k cut.
  float top_p = 1.0f;        // 1 means no nucleus cut.
  uint64_t seed = 0;         // Sampling is a pure function of (seed, step, logits).
  int32_t max_tokens = 16;   // Tokens to generate at most.
  bool ignore_eos = false;
  std::vector<TokenId> stop_token_ids;
  std::vector<std::string> stop;  // Stop strings, matched on the detokenized output.
};

// What a request's unset temperature, top_k and top_p mean: the model's generation_config.json
// values (model/generation_config.h), as vLLM takes them, else these built-in ones.
struct SamplingDefaults {
  float temperature = 0.0f;  // Greedy.
  int32_t top_k = 0;         // Off.
  float top_p = 1.0f;        // Off.
};

// The part of SamplingParams that a worker needs to sample one token. Fixed-size: it is copied
// into every step (SequenceStep), so nothing whose size the client picks belongs here.
struct StepSampling {
  float temperature = 0.0f;  // 0 means greedy.
  int32_t top_k = 0;         // 0 means no top-k cut.
  float top_p = 1.0f;        // 1 means no nucleus cut.
  uint64_t seed = 0;         // Sampling is a pure function of (seed, step, logits).
};

// Returns the StepSampling of `params`.
inline StepSampling ToStepSampling(const SamplingParams& params) {
  return {params.temperature, params.top_k, params.top_p, params.seed};
}

// INVALID_ARGUMENT naming the bad field: temperature < 0 or not finite, top_k < 0,
// top_p outside (0, 1], max_tokens < 1.
absl::Status ValidateSamplingParams(const SamplingParams& params);

}  // namespace hkv
