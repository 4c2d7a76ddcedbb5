#include "model/rope.h"

#include <cmath>

namespace hkv {

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

}  // namespace hkv
