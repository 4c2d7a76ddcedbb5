#include "model/dummy_weights.h"

#include <cmath>

#include "common/status_macros.h"

namespace hkv {
namespace {

// splitmix64-driven uniform fill: fast and identical on every platform.
class Filler {
 public:
  explicit Filler(uint64_t seed) : state_(seed) {}
  std::vector<float> Uniform(size_t n, float scale) {
    std::vector<float> out(n);
    for (float& x : out) {
      state_ += 0x9E3779B97F4A7C15ULL;
      uint64_t z = state_;
      z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
      z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
      z ^= z >> 31;
      x = scale * (static_cast<float>(z >> 40) / 8388608.0f - 1.0f);
    }
    return out;
  }

 private:
  uint64_t state_;
};

}  // namespace

absl::StatusOr<Model> MakeDummyModel(const ModelConfig& config, uint64_t seed) {
  HKV_RETURN_IF_ERROR(ValidateModelConfig(config));
  Model model;
  model.config = config;
  const ModelConfig& c = model.config;
  Filler f(seed);
  const size_t dim = c.dim, q = c.q_size(), kv = c.kv_size(), hidden = c.hidden_dim;
  auto scale = [](size_t fan_in) { return 1.0f / std::sqrt(static_cast<float>(fan_in)); };
  ModelWeights& w = model.weights;
  w.embedding = f.Uniform(c.vocab_size * dim, 1.0f);
  w.layers.resize(c.num_layers);
  for (LayerWeights& l : w.layers) {
    l.attn_norm.assign(dim, 1.0f);
    l.ffn_norm.assign(dim, 1.0f);
    l.wq = f.Uniform(q * dim, scale(dim));
    l.wk = f.Uniform(kv * dim, scale(dim));
    l.wv = f.Uniform(kv * dim, scale(dim));
    if (c.qkv_bias) {
      l.bq = f.Uniform(q, 0.1f);
      l.bk = f.Uniform(kv, 0.1f);
      l.bv = f.Uniform(kv, 0.1f);
    }
    l.wo = f.Uniform(dim * q, scale(q));
    l.w_gate = f.Uniform(hidden * dim, scale(dim));
    l.w_up = f.Uniform(hidden * dim, scale(dim));
    l.w_down = f.Uniform(dim * hidden, scale(hidden));
  }
  w.final_norm.assign(dim, 1.0f);
  if (!c.tie_embeddings) w.lm_head = f.Uniform(c.vocab_size * dim, scale(dim));
  return model;
}

}  // namespace hkv
