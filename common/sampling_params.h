#pragma once
// How a request picks its next token. Plain data; validated by ValidateSamplingParams.

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

// INVALID_ARGUMENT naming the bad field: temperature < 0 or not finite, top_k < 0,
// top_p outside (0, 1], max_tokens < 1.
absl::Status ValidateSamplingParams(const SamplingParams& params);

}  // namespace hkv
