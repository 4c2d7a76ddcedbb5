// Tensor-parallel sharding on the CPU: summing the ranks' partial outputs (what the all-reduce
// will do) reproduces the unsharded layers, for contiguous and HeadKV-balanced head placements,
// GQA, and q/k/v biases.

#include "model/tensor_parallel.h"

#include <cmath>
#include <random>

#include "gtest/gtest.h"
#include "model/dummy_weights.h"
#include "model/rope.h"
#include "workers/cpu/cpu_ops.h"

namespace hkv {
namespace {

// One layer's attention (dense, causal) and MLP, each returning the output before the residual
// add, so partials from ranks can be summed.
std::vector<float> AttentionOut(const ModelConfig& c, const LayerWeights& w,
                                const std::vector<float>& xb, int32_t T,
                                const std::vector<float>& inv_freq) {
  const int32_t d = c.head_dim, q_size = c.q_size(), kv_size = c.kv_size();
  std::vector<float> q(T * q_size), k(T * kv_size), v(T * kv_size), attn(T * q_size), out(T * c.dim);
  std::vector<float> scores(T);
  MatMul(xb.data(), T, c.dim, w.wq, w.bq, q_size, q.data(), nullptr);
  MatMul(xb.data(), T, c.dim, w.wk, w.bk, kv_size, k.data(), nullptr);
  MatMul(xb.data(), T, c.dim, w.wv, w.bv, kv_size, v.data(), nullptr);
  for (int32_t t = 0; t < T; ++t) {
    ApplyRope(&q[t * q_size], c.num_heads, d, t, inv_freq, c.rope_style);
    ApplyRope(&k[t * kv_size], c.num_kv_heads, d, t, inv_freq, c.rope_style);
  }
  for (int32_t t = 0; t < T; ++t) {
    for (int32_t hq = 0; hq < c.num_heads; ++hq) {
      const int32_t h = hq / c.group_size();
      Attend(&q[t * q_size + hq * d], d, t + 1, [&](int32_t j) { return &k[j * kv_size + h * d]; },
             [&](int32_t j) { return &v[j * kv_size + h * d]; }, scores.data(),
             &attn[t * q_size + hq * d]);
    }
  }
  MatMul(attn.data(), T, q_size, w.wo, {}, c.dim, out.data(), nullptr);
  return out;
}

std::vector<float> MlpOut(const ModelConfig& c, const LayerWeights& w, const std::vector<float>& xb,
                          int32_t T) {
  std::vector<float> g(T * c.hidden_dim), u(g.size()), out(T * c.dim);
  MatMul(xb.data(), T, c.dim, w.w_gate, {}, c.hidden_dim, g.data(), nullptr);
  MatMul(xb.data(), T, c.dim, w.w_up, {}, c.hidden_dim, u.data(), nullptr);
  for (size_t i = 0; i < g.size(); ++i) g[i] = g[i] / (1.0f + std::exp(-g[i])) * u[i];
  MatMul(g.data(), T, c.hidden_dim, w.w_down, {}, c.dim, out.data(), nullptr);
  return out;
}

// Runs all layers on `x` with the given shards, summing each block's partials (tp = shards).
std::vector<float> Forward(const std::vector<const Model*>& shards, std::vector<float> x,
                           int32_t T) {
  const ModelConfig& full = shards[0]->config;
  const std::vector<float> inv_freq = RopeInvFreq(full);
  std::vector<float> xb(x.size());
  for (int32_t l = 0; l < full.num_layers; ++l) {
    for (int32_t t = 0; t < T; ++t) {
      RmsNorm(&x[t * full.dim], shards[0]->weights.layers[l].attn_norm.data(), full.dim,
              full.norm_eps, &xb[t * full.dim]);
    }
    for (const Model* s : shards) {
      const std::vector<float> part = AttentionOut(s->config, s->weights.layers[l], xb, T, inv_freq);
      for (size_t i = 0; i < x.size(); ++i) x[i] += part[i];
    }
    for (int32_t t = 0; t < T; ++t) {
      RmsNorm(&x[t * full.dim], shards[0]->weights.layers[l].ffn_norm.data(), full.dim,
              full.norm_eps, &xb[t * full.dim]);
    }
    for (const Model* s : shards) {
      const std::vector<float> part = MlpOut(s->config, s->weights.layers[l], xb, T);
      for (size_t i = 0; i < x.size(); ++i) x[i] += part[i];
    }
  }
  return x;
}

ModelConfig Config(bool bias) {
  ModelConfig c;
  c.name = "tp";
  c.dim = 96;
  c.hidden_dim = 128;
  c.num_layers = 3;
  c.num_heads = 8;
  c.num_kv_heads = 4;
  c.head_dim = 16;
  c.vocab_size = 64;
  c.max_seq_len = 64;
  c.rope_style = RopeStyle::kHalf;
  c.qkv_bias = bias;
  return c;
}

TEST(TensorParallelTest, ShardedPartialsSumToTheFullModel) {
  for (bool bias : {false, true}) {
    auto model = MakeDummyModel(Config(bias), 3);
    ASSERT_TRUE(model.ok());
    const ModelConfig& c = model->config;
    constexpr int32_t T = 9;
    std::mt19937 rng(5);
    std::uniform_real_distribution<float> u(-1, 1);
    std::vector<float> x(T * c.dim);
    for (float& v : x) v = u(rng);
    const std::vector<float> want = Forward({&*model}, x, T);
    for (int32_t tp : {2, 4}) {
      std::vector<int32_t> load(c.num_layers * c.num_kv_heads);
      for (int32_t& v : load) v = 1 + rng() % 100;
      for (bool balanced : {false, true}) {
        auto placement = balanced ? BalancedAssignment(load, c.num_layers, c.num_kv_heads, tp)
                                  : ContiguousAssignment(c.num_layers, c.num_kv_heads, tp);
        ASSERT_TRUE(placement.ok());
        std::vector<Model> shards;
        for (int32_t r = 0; r < tp; ++r) {
          auto s = ShardModel(*model, *placement, r);
          ASSERT_TRUE(s.ok()) << s.status();
          EXPECT_EQ(s->config.num_kv_heads, c.num_kv_heads / tp);
          EXPECT_EQ(s->weights.layers[0].wq.size(), c.q_size() * c.dim / tp);
          shards.push_back(std::move(*s));
        }
        std::vector<const Model*> ptrs;
        for (const Model& s : shards) ptrs.push_back(&s);
        const std::vector<float> got = Forward(ptrs, x, T);
        double max_err = 0;
        for (size_t i = 0; i < got.size(); ++i) max_err = std::max<double>(max_err, std::fabs(got[i] - want[i]));
        EXPECT_LT(max_err, 1e-4) << "tp " << tp << " balanced " << balanced << " bias " << bias;
      }
    }
  }
}

TEST(TensorParallelTest, RejectsSizesThatDoNotDivide) {
  auto model = MakeDummyModel(Config(false), 3);
  ASSERT_TRUE(model.ok());
  EXPECT_FALSE(ShardConfig(model->config, 3).ok());
  auto placement = ContiguousAssignment(3, 4, 2);
  EXPECT_FALSE(ShardModel(*model, *placement, 2).ok());
  auto wrong = ContiguousAssignment(2, 4, 2);
  EXPECT_FALSE(ShardModel(*model, *wrong, 0).ok());
}

}  // namespace
}  // namespace hkv
