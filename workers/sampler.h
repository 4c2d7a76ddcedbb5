#pragma once
// Token sampling: greedy, temperature, top-k, top-p. A pure function of (params, step, logits):
// the random draw comes from a counter-based hash of (seed, step), so batching, preemption and
// recompute never change a request's output. Thread-safe.

#include <cstdint>
#include <vector>

#include "absl/types/span.h"
#include "common/ids.h"
#include "common/sampling_params.h"

namespace hkv {

// Uniform double in [0, 1) for (seed, step).
double SampleUniform(uint64_t seed, int64_t step);

// Picks the next token from `logits`. Greedy (temperature 0) takes the largest logit, the
// lowest id on ties; otherwise softmax(logits / T) restricted to top-k, then to the smallest
// set whose probability reaches top-p, sampled with SampleUniform(seed, step).
TokenId SampleToken(absl::Span<const float> logits, const StepSampling& params, int64_t step);

}  // namespace hkv
