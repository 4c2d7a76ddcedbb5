#include "workers/cpu_ops.h"

#include <cmath>

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

std::vector<float> RopeInvFreq(const ModelConfig& c) {
  const int32_t half = c.head_dim / 2;
  std::vector<float> inv(half);
  for (int32_t j = 0; j < half; ++j) {
    inv[j] = 1.0f / std::pow(c.rope_theta, static_cast<float>(2 * j) / c.head_dim);
  }
  if (c.rope_scaling.type == "llama3") {
    // Hugging Face's _compute_llama3_parameters.
    const RopeScaling& s = c.rope_scaling;
    const double old_len = s.original_max_position_embeddings;
    const double low_wavelen = old_len / s.low_freq_factor;
    const double high_wavelen = old_len / s.high_freq_factor;
    for (int32_t j = 0; j < half; ++j) {
      const double wavelen = 2.0 * M_PI / inv[j];
      if (wavelen < high_wavelen) continue;
      if (wavelen > low_wavelen) {
        inv[j] = static_cast<float>(inv[j] / s.factor);
        continue;
      }
      const double smooth =
          (old_len / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
      inv[j] = static_cast<float>((1 - smooth) * inv[j] / s.factor + smooth * inv[j]);
    }
  }
  return inv;
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

}  // namespace hkv
