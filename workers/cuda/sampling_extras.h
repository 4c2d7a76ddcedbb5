#pragma once
// The CUDA worker's sampling extras for one step: the penalty lists of its sampled rows (built
// on the host from the worker's TokenHistories) and the top-k of the log-probabilities asked
// for. Host only (no CUDA include), so CPU-only builds test it.
//
// Steps with extras run eagerly (never as a CUDA graph): their penalty lists change in size
// every step, and most steps have none.
//
// Thread-compatible: built and read by the worker's thread.

#include <cstdint>
#include <vector>

#include "common/batch.h"
#include "workers/cuda/step_layout.h"
#include "workers/token_history.h"

namespace hkv {

// kernels::PenaltyRow's layout.
struct HostPenaltyRow {
  float presence = 0.0f;
  float frequency = 0.0f;
  float repetition = 1.0f;
  int32_t ban = 0;
};

struct SamplingExtras {
  bool penalties = false;  // Some row has a penalty or a ban: run kernels::ApplyPenalties.
  int32_t top = -1;        // Largest sampling.logprobs of the sampled rows (-1: no logprobs).
  // Per sampled row (HostStep::sample_rows order), CSR of (token id, count) as
  // kernels::ApplyPenalties reads them (count < 0: banned before min_tokens).
  std::vector<HostPenaltyRow> params;
  std::vector<int32_t> indptr, ids, counts;
};

// Returns whether a sequence step needs the extras (and so runs eagerly).
bool NeedsSamplingExtras(const SequenceStep& step);

// Builds the extras of `h`'s sampled rows from `histories` (already observed for `b`).
SamplingExtras BuildSamplingExtras(const Batch& b, const HostStep& h,
                                   const TokenHistories& histories, int32_t vocab_size);

}  // namespace hkv
