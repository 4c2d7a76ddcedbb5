#pragma once
// Token sampling: penalties, greedy, temperature, top-k, min-p, top-p, and log-probabilities.
// A pure function of (params, step, logits, history): the random draw comes from a
// counter-based hash of (seed, step), so batching, preemption and recompute never change a
// request's output. Thread-safe.
//
// One sample, in order (vLLM's): logprobs of the raw logits; ApplyPenalties (repetition, then
// frequency and presence, then the min_tokens ban); then SampleToken.

#include <cstdint>
#include <vector>

#include "absl/types/span.h"
#include "common/batch.h"
#include "common/ids.h"
#include "common/sampling_params.h"
#include "workers/token_history.h"

namespace hkv {

// Uniform double in [0, 1) for (seed, step).
double SampleUniform(uint64_t seed, int64_t step);

// Picks the next token from `logits`. Greedy (temperature 0) takes the largest logit, the
// lowest id on ties; otherwise softmax(logits / T) restricted to top-k, then to the tokens whose
// probability is at least min_p times the largest, then to the smallest set whose probability
// (renormalised) reaches top-p, sampled with SampleUniform(seed, step).
TokenId SampleToken(absl::Span<const float> logits, const StepSampling& params, int64_t step);

// Applies `params`' penalties to `logits` in place, given the sequence's history: a token of the
// prompt or output has a positive logit divided by repetition_penalty, a negative one multiplied;
// a generated token loses frequency_penalty x its count + presence_penalty; before min_tokens
// tokens are generated, min_tokens_banned get -inf (unless that would ban every token).
void ApplyPenalties(absl::Span<float> logits, const StepSampling& params,
                    const TokenHistory& history);

// Returns log_softmax(logits)[token] and the `top` largest entries (ties: lower id first).
// REQUIRES: 0 <= token < logits.size(), 0 <= top.
TokenLogprobs ComputeLogprobs(absl::Span<const float> logits, TokenId token, int32_t top);

// The whole sampling of one step's sequence from its raw `logits` (modified: penalties):
// step.num_samples tokens into result->token and extra_tokens, with logprobs when asked.
// REQUIRES: histories.CheckFor(step).ok().
void SampleSequence(const SequenceStep& step, const TokenHistories& histories,
                    std::vector<float>& logits, SequenceResult* result);

}  // namespace hkv
