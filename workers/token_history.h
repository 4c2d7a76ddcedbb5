#pragma once
// Per-sequence token history for the samplers that read it (presence / frequency / repetition
// penalties, min_tokens). The step carries no history: the worker rebuilds it from the tokens
// the steps run, which are every token of a sequence in position order (the prompt, then each
// sampled token as the next step's input). A step with start_pos == 0 (a first prefill, or the
// recompute after preemption) starts the history again, so it is always exactly the tokens at
// positions < start_pos + tokens.size(): sampling stays a pure function of (seed, step, logits,
// history) whatever the batching, chunking or preemption.
//
// Not thread-safe: Observe() runs on the worker's thread before the step samples; Find() may
// then be called from the worker's sampling threads concurrently (no writes meanwhile).

#include <cstdint>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "common/batch.h"

namespace hkv {

struct TokenHistory {
  int32_t num_prompt_tokens = 0;
  int32_t num_generated = 0;                            // Tokens seen at positions >= prompt.
  absl::flat_hash_map<TokenId, int32_t> output_counts;  // Generated tokens, times each.
  absl::flat_hash_set<TokenId> seen;                    // Prompt or generated (repetition).
  std::vector<TokenId> min_tokens_banned;               // See SequenceStep.
};

class TokenHistories {
 public:
  // Applies `batch`'s forks, then its released ids, then the tokens of each sequence whose
  // sampling uses history (StepSampling::uses_history); the others keep no state.
  void Observe(const Batch& batch);
  // Returns the history of sequence `id`, or null if none is kept.
  const TokenHistory* Find(RequestId id) const;
  // Returns the history `step` samples from: INTERNAL when the step's sampling needs one and
  // none is kept, or when it does not hold exactly step.sample_step generated tokens.
  absl::Status CheckFor(const SequenceStep& step) const;
  size_t size() const { return histories_.size(); }

 private:
  absl::flat_hash_map<RequestId, TokenHistory> histories_;
};

}  // namespace hkv
