#pragma once
// On-device token sampling from fp32 logits: greedy, temperature, top-k and top-p.
// Host-only declarations; kernels in sampling.cu.
//
// Per row: temperature <= 0 -> argmax (ties -> lowest id). Otherwise p ~ softmax(logits / T);
// top_k > 0 keeps the ids whose logit is >= the k-th largest (ties at the boundary kept);
// min_p > 0 then keeps those whose probability is >= min_p x the largest; top_p < 1 then keeps the
// smallest set of highest probabilities whose mass reaches top_p (ties at the boundary kept); the
// token is the inverse CDF, in id order, at `uniform` (in [0, 1), drawn by the caller, so runs are
// reproducible).
//
// Thread-safety: stateless; ordered by the stream.

#include <cuda_runtime.h>

#include <cstdint>

namespace hkv::kernels {

struct SamplingRow {
  float temperature = 0.0f;
  int32_t top_k = 0;  // 0: off
  float top_p = 1.0f;
  float uniform = 0.0f;
  float min_p = 0.0f;  // 0: off
};

// Samples one token per row.
//   logits: device [rows, vocab] (row stride `stride`); params: device [rows];
//   out: device [rows].
// Grid: (rows) Block: (1024).
cudaError_t SampleTokens(const float* logits, int64_t stride, int32_t rows, int32_t vocab,
                         const SamplingRow* params, int32_t* out, cudaStream_t stream);

}  // namespace hkv::kernels
