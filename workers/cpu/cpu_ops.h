#pragma once
// Plain fp32 building blocks of the CPU reference forward pass. Written to be obviously right:
// every GPU kernel is tested against these. Thread-safe (pure functions); MatMul uses the pool
// it is given.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "common/thread_pool.h"
#include "model/model_config.h"

namespace hkv {

// out[i] = x[i] / sqrt(mean(x^2) + eps) * weight[i], for n elements.
void RmsNorm(const float* x, const float* weight, int32_t n, float eps, float* out);

// y[t, o] = sum_i x[t, i] * w[o, i] (+ bias[o]) for t < rows: x [rows, in], w [out, in] row-major.
// Parallel over output features when `pool` is not null.
void MatMul(const float* x, int32_t rows, int32_t in, const std::vector<float>& w,
            const std::vector<float>& bias, int32_t out, float* y, ThreadPool* pool);

// Rotates each of `num_heads` heads of `vec` [num_heads, head_dim] for position `pos`.
void ApplyRope(float* vec, int32_t num_heads, int32_t head_dim, int32_t pos,
               const std::vector<float>& inv_freq, RopeStyle style);

// out[0..d) = softmax(q . k_j / sqrt(d))_j weighted sum of v_j, j < len. `key(j)` and
// `value(j)` return pointers to d floats. One fixed order of operations, so the same inputs
// always give bit-identical outputs whatever storage the keys live in.
template <typename KeyFn, typename ValueFn>
void Attend(const float* q, int32_t d, int32_t len, KeyFn key, ValueFn value, float* scores,
            float* out) {
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  float max_score = -INFINITY;
  for (int32_t j = 0; j < len; ++j) {
    const float* k = key(j);
    float s = 0.0f;
    for (int32_t i = 0; i < d; ++i) s += q[i] * k[i];
    scores[j] = s * scale;
    max_score = std::max(max_score, scores[j]);
  }
  float total = 0.0f;
  for (int32_t j = 0; j < len; ++j) {
    scores[j] = std::exp(scores[j] - max_score);
    total += scores[j];
  }
  for (int32_t i = 0; i < d; ++i) out[i] = 0.0f;
  for (int32_t j = 0; j < len; ++j) {
    const float p = scores[j] / total;
    const float* v = value(j);
    for (int32_t i = 0; i < d; ++i) out[i] += p * v[i];
  }
}

// Attention probe of one row: `exp_scores[0..len)` are exp(s_j - max) as Attend leaves them;
// writes the `k` positions of [0, prompt_len) with the highest weight exp_scores[j] / sum, by
// falling weight, ties to the lower position, and their weights. REQUIRES: 1 <= k <=
// prompt_len <= len.
void ProbeTopN(const float* exp_scores, int32_t len, int32_t prompt_len, int32_t k,
               int32_t* positions, float* weights);

}  // namespace hkv
