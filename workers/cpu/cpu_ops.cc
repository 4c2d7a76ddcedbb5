#include "workers/cpu/cpu_ops.h"

#include <cmath>
#include <numeric>

namespace hkv {

void RmsNorm(const float* x, const float* weight, int32_t n, float eps, float* out) {
  float ss = 0.0f;
  for (int32_t i = 0; i < n; ++i) ss += x[i] * x[i];
  ss = 1.0f / std::sqrt(ss / n + eps);
  for (int32_t i = 0; i < n; ++i) out[i] = weight[i] * (ss * x[i]);
}

void MatMul(const float* x, int32_t rows, int32_t in, const std::vector<float>& w,
            const std::vector<float>& bias, int32_t out, float* y, ThreadPool* pool) {
  auto body = [&](int64_t begin, int64_t end) {
    for (int64_t o = begin; o < end; ++o) {
      const float* wr = w.data() + o * in;
      for (int32_t t = 0; t < rows; ++t) {
        const float* xr = x + static_cast<int64_t>(t) * in;
        float s = 0.0f;
        for (int32_t i = 0; i < in; ++i) s += wr[i] * xr[i];
        y[static_cast<int64_t>(t) * out + o] = bias.empty() ? s : s + bias[o];
      }
    }
  };
  // Small products are not worth waking threads for.
  if (pool != nullptr && static_cast<int64_t>(out) * in * rows >= (1 << 16)) {
    pool->ParallelFor(out, body);
  } else {
    body(0, out);
  }
}

void ApplyRope(float* vec, int32_t num_heads, int32_t head_dim, int32_t pos,
               const std::vector<float>& inv_freq, RopeStyle style) {
  const int32_t half = head_dim / 2;
  for (int32_t j = 0; j < half; ++j) {
    const float angle = static_cast<float>(pos) * inv_freq[j];
    const float c = std::cos(angle), s = std::sin(angle);
    for (int32_t h = 0; h < num_heads; ++h) {
      float* v = vec + static_cast<int64_t>(h) * head_dim;
      const int32_t a = style == RopeStyle::kInterleaved ? 2 * j : j;
      const int32_t b = style == RopeStyle::kInterleaved ? 2 * j + 1 : j + half;
      const float x0 = v[a], x1 = v[b];
      v[a] = x0 * c - x1 * s;
      v[b] = x0 * s + x1 * c;
    }
  }
}

void ProbeTopN(const float* exp_scores, int32_t len, int32_t prompt_len, int32_t k,
               int32_t* positions, float* weights) {
  float total = 0.0f;  // The same sum, in the same order, as Attend's.
  for (int32_t j = 0; j < len; ++j) total += exp_scores[j];
  std::vector<int32_t> order(prompt_len);
  std::iota(order.begin(), order.end(), 0);
  std::partial_sort(order.begin(), order.begin() + k, order.end(), [&](int32_t a, int32_t b) {
    return exp_scores[a] != exp_scores[b] ? exp_scores[a] > exp_scores[b] : a < b;
  });
  for (int32_t i = 0; i < k; ++i) {
    positions[i] = order[i];
    weights[i] = exp_scores[order[i]] / total;
  }
}

}  // namespace hkv
