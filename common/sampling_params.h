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
  // Penalties on the logits before temperature (vLLM's and OpenAI's definitions): presence
  // subtracts presence_penalty from every token generated at least once, frequency subtracts
  // frequency_penalty per time generated; repetition (CTRL, as Hugging Face and vLLM) divides a
  // positive logit (multiplies a negative one) by repetition_penalty for every token of the
  // prompt or the output.
  float presence_penalty = 0.0f;    // [-2, 2]; 0 = off.
  float frequency_penalty = 0.0f;   // [-2, 2]; 0 = off.
  float repetition_penalty = 1.0f;  // (0, 2]; 1 = off.
  float min_p = 0.0f;               // [0, 1]: drop tokens below min_p x the top probability.
  int32_t min_tokens = 0;           // EOS and stop_token_ids cannot be sampled before this.
  // Log-probabilities: -1 = none; 0 = the sampled token's; k > 0 = also the k most likely.
  int32_t logprobs = -1;
  int32_t n = 1;  // Independent samples of one prompt, sharing its KV blocks.
};

// The most top log-probabilities a request may ask for (OpenAI's top_logprobs bound).
inline constexpr int32_t kMaxTopLogprobs = 20;

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
  uint64_t seed = 0;         // Sampling is a pure function of (seed, step, logits, history).
  float presence_penalty = 0.0f;
  float frequency_penalty = 0.0f;
  float repetition_penalty = 1.0f;
  float min_p = 0.0f;
  int32_t min_tokens = 0;
  int32_t logprobs = -1;  // -1: none; else top-k alternatives (<= kMaxTopLogprobs).

  // Returns whether sampling reads the sequence's token history (penalties, min_tokens).
  bool uses_history() const {
    return presence_penalty != 0.0f || frequency_penalty != 0.0f || repetition_penalty != 1.0f ||
           min_tokens > 0;
  }
};

// Returns the StepSampling of `params`.
StepSampling ToStepSampling(const SamplingParams& params);

// Returns the seed of sample `index` of a request with n > 1: `seed` itself for index 0 (so
// n = 1 and the first of n samples agree), a well-mixed function of (seed, index) otherwise.
uint64_t SampleSeed(uint64_t seed, int32_t index);

// INVALID_ARGUMENT naming the bad field: temperature < 0 or not finite, top_k < 0,
// top_p outside (0, 1], max_tokens < 1, penalties, min_p or min_tokens out of range, logprobs
// outside [-1, kMaxTopLogprobs], n < 1 (the server bounds n from above).
absl::Status ValidateSamplingParams(const SamplingParams& params);

}  // namespace hkv
