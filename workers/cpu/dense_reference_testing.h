#pragma once
// Test helper: a dense fp32/fp64 forward pass written from the model's weights with plain
// loops (no paged cache, no worker), for checking the workers' attention probes and what
// `hkv headkv-score` computes from them. O(n^2) in the tokens; tests only. Thread-safe.

#include <algorithm>
#include <cmath>
#include <vector>

#include "model/model_config.h"
#include "model/rope.h"
#include "workers/cpu/cpu_ops.h"

namespace hkv::testing {

// rows[l][h][j]: the softmax weight that query head h of layer l pays to position j when the
// last of `tokens` is the query (causal, full cache), in double.
using Rows = std::vector<std::vector<std::vector<double>>>;

struct DenseStep {
  Rows rows;
  std::vector<float> logits;  // [vocab] at the last token.
};

inline DenseStep DenseForward(const Model& model, const std::vector<TokenId>& tokens) {
  const ModelConfig& c = model.config;
  const ModelWeights& w = model.weights;
  const int32_t n = static_cast<int32_t>(tokens.size()), dim = c.dim, d = c.head_dim;
  const std::vector<float> inv_freq = RopeInvFreq(c);
  std::vector<float> x(static_cast<size_t>(n) * dim), xb(x.size()), q(size_t{1} * n * c.q_size());
  std::vector<float> k(static_cast<size_t>(n) * c.kv_size()), v(k.size()), att(q.size());
  std::vector<float> o(x.size()), h1(static_cast<size_t>(n) * c.hidden_dim), h3(h1.size());
  for (int32_t t = 0; t < n; ++t) {
    std::copy_n(&w.embedding[static_cast<size_t>(tokens[t]) * dim], dim, &x[t * dim]);
  }
  Rows rows(c.num_layers, std::vector<std::vector<double>>(c.num_heads));
  for (int32_t l = 0; l < c.num_layers; ++l) {
    const LayerWeights& lw = w.layers[l];
    for (int32_t t = 0; t < n; ++t)
      RmsNorm(&x[t * dim], lw.attn_norm.data(), dim, c.norm_eps, &xb[t * dim]);
    MatMul(xb.data(), n, dim, lw.wq, lw.bq, c.q_size(), q.data(), nullptr);
    MatMul(xb.data(), n, dim, lw.wk, lw.bk, c.kv_size(), k.data(), nullptr);
    MatMul(xb.data(), n, dim, lw.wv, lw.bv, c.kv_size(), v.data(), nullptr);
    for (int32_t t = 0; t < n; ++t) {
      ApplyRope(&q[t * c.q_size()], c.num_heads, d, t, inv_freq, c.rope_style);
      ApplyRope(&k[t * c.kv_size()], c.num_kv_heads, d, t, inv_freq, c.rope_style);
    }
    for (int32_t t = 0; t < n; ++t) {
      for (int32_t h = 0; h < c.num_heads; ++h) {
        const int32_t kh = h / c.group_size();
        std::vector<double> p(t + 1);
        double mx = -INFINITY, sum = 0;
        for (int32_t j = 0; j <= t; ++j) {
          double s = 0;
          for (int32_t i = 0; i < d; ++i) {
            s += double{q[t * c.q_size() + h * d + i]} * k[j * c.kv_size() + kh * d + i];
          }
          p[j] = s / std::sqrt(double(d));
          mx = std::max(mx, p[j]);
        }
        for (double& e : p) sum += (e = std::exp(e - mx));
        for (double& e : p) e /= sum;
        for (int32_t i = 0; i < d; ++i) {
          double acc = 0;
          for (int32_t j = 0; j <= t; ++j) acc += p[j] * v[j * c.kv_size() + kh * d + i];
          att[t * c.q_size() + h * d + i] = static_cast<float>(acc);
        }
        if (t == n - 1) rows[l][h] = std::move(p);
      }
    }
    MatMul(att.data(), n, c.q_size(), lw.wo, {}, dim, o.data(), nullptr);
    for (size_t i = 0; i < x.size(); ++i) x[i] += o[i];
    for (int32_t t = 0; t < n; ++t)
      RmsNorm(&x[t * dim], lw.ffn_norm.data(), dim, c.norm_eps, &xb[t * dim]);
    MatMul(xb.data(), n, dim, lw.w_gate, {}, c.hidden_dim, h1.data(), nullptr);
    MatMul(xb.data(), n, dim, lw.w_up, {}, c.hidden_dim, h3.data(), nullptr);
    for (size_t i = 0; i < h1.size(); ++i) h1[i] = h1[i] / (1.0f + std::exp(-h1[i])) * h3[i];
    MatMul(h1.data(), n, c.hidden_dim, lw.w_down, {}, dim, o.data(), nullptr);
    for (size_t i = 0; i < x.size(); ++i) x[i] += o[i];
  }
  DenseStep out;
  out.rows = std::move(rows);
  std::vector<float> last(dim);
  RmsNorm(&x[static_cast<size_t>(n - 1) * dim], w.final_norm.data(), dim, c.norm_eps, last.data());
  out.logits.resize(c.vocab_size);
  MatMul(last.data(), 1, dim, w.classifier(), {}, c.vocab_size, out.logits.data(), nullptr);
  return out;
}

}  // namespace hkv::testing
