#pragma once
// On-device logits processing around sampling: penalties before it, log-probabilities after.
// Host-only declarations; kernels in logits_processing.cu. The CPU definitions they follow are
// workers/sampler.h's ApplyPenalties and ComputeLogprobs (compared in a GPU test there).
//
// Thread-safety: stateless; ordered by the stream.

#include <cuda_runtime.h>

#include <cstdint>

namespace hkv::kernels {

struct PenaltyRow {
  float presence = 0.0f;
  float frequency = 0.0f;
  float repetition = 1.0f;
  int32_t ban = 0;  // 1: the row's ban entries apply (min_tokens not reached).
};

// Penalises each row's listed tokens in place. Entry e of row r (indptr[r] <= e < indptr[r+1])
// names token ids[e] with counts[e] >= 0: a prompt or output token generated counts[e] times
// (repetition penalty, then -= frequency * count + (count > 0 ? presence : 0)); counts[e] < 0:
// a token banned (-inf) when the row's `ban` is set, after every penalty. A token appears in at
// most one penalty entry per row.
//   logits: device [rows, vocab] (row stride `stride`); params: device [rows];
//   indptr: device [rows + 1]; ids, counts: device [indptr[rows]].
// Grid: (rows) Block: (256).
cudaError_t ApplyPenalties(float* logits, int64_t stride, int32_t rows, int32_t vocab,
                           const PenaltyRow* params, const int32_t* indptr, const int32_t* ids,
                           const int32_t* counts, cudaStream_t stream);

// Per row: out_logprob[r] = log_softmax(logits[r])[tokens[r]], and the `top` largest entries of
// log_softmax(logits[r]) by value descending, lower id first on ties (top <= 32).
//   logits: device [rows, vocab]; tokens: device [rows]; out_logprob: device [rows];
//   out_top_ids, out_top_logprobs: device [rows, top].
// Grid: (rows) Block: (1024).
cudaError_t ComputeLogprobs(const float* logits, int64_t stride, int32_t rows, int32_t vocab,
                            const int32_t* tokens, int32_t top, float* out_logprob,
                            int32_t* out_top_ids, float* out_top_logprobs, cudaStream_t stream);

}  // namespace hkv::kernels
