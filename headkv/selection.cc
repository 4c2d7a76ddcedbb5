#include "headkv/selection.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "common/logging.h"

namespace hkv {
namespace {

// NaN ranks below every number so the ordering stays a strict weak order.
float RankKey(float s) { return std::isnan(s) ? -std::numeric_limits<float>::infinity() : s; }

// Orders positions of one head: higher score first, then lower position.
struct HigherScoreFirst {
  absl::Span<const float> scores;
  bool operator()(int32_t a, int32_t b) const {
    const float ka = RankKey(scores[a]);
    const float kb = RankKey(scores[b]);
    if (ka != kb) return ka > kb;
    return a < b;
  }
};

// Adds, for one query head, the softmax rows of the w window queries restricted to the first
// n - w keys into `acc` [n - w]. `logits` is scratch of at least n floats.
void AccumulateWindowAttention(const float* q_window, const float* keys, int32_t n, int32_t w,
                               int32_t num_q_heads, int32_t num_kv_heads, int32_t head_dim,
                               int32_t q_head, std::vector<float>& logits, float* acc) {
  const int32_t group = num_q_heads / num_kv_heads;
  const int32_t kv_head = q_head / group;
  const int32_t past = n - w;
  const float scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
  for (int32_t i = 0; i < w; ++i) {
    const float* q = q_window + (static_cast<int64_t>(i) * num_q_heads + q_head) * head_dim;
    const int32_t last = past + i;  // Causal: window query i sees keys 0..past+i.
    float max_logit = -std::numeric_limits<float>::infinity();
    for (int32_t j = 0; j <= last; ++j) {
      const float* k = keys + (static_cast<int64_t>(j) * num_kv_heads + kv_head) * head_dim;
      float dot = 0.0f;
      for (int32_t d = 0; d < head_dim; ++d) dot += q[d] * k[d];
      logits[j] = dot * scale;
      max_logit = std::max(max_logit, logits[j]);
    }
    float sum = 0.0f;
    for (int32_t j = 0; j <= last; ++j) {
      logits[j] = std::exp(logits[j] - max_logit);
      sum += logits[j];
    }
    const float inv = 1.0f / sum;
    for (int32_t j = 0; j < past; ++j) acc[j] += logits[j] * inv;
  }
}

// Max-pools `x` with kernel k, padding k/2, stride 1; windows clipped at the edges.
std::vector<float> MaxPool(const std::vector<float>& x, int32_t k) {
  const int32_t len = static_cast<int32_t>(x.size());
  std::vector<float> out(len);
  for (int32_t j = 0; j < len; ++j) {
    const int32_t lo = std::max(0, j - k / 2);
    const int32_t hi = std::min(len - 1, j - k / 2 + k - 1);
    float m = x[lo];
    for (int32_t t = lo + 1; t <= hi; ++t) m = std::max(m, x[t]);
    out[j] = m;
  }
  return out;
}

}  // namespace

std::vector<std::vector<float>> WindowScores(const float* q_window, const float* keys, int32_t n,
                                             int32_t w, int32_t num_q_heads, int32_t num_kv_heads,
                                             int32_t head_dim, int32_t pool_kernel,
                                             bool group_average) {
  HKV_CHECK(w >= 1 && n >= w) << "n=" << n << " w=" << w;
  HKV_CHECK(num_kv_heads >= 1 && num_q_heads % num_kv_heads == 0)
      << "num_q_heads=" << num_q_heads << " num_kv_heads=" << num_kv_heads;
  HKV_CHECK(head_dim >= 1 && pool_kernel >= 1);
  const int32_t past = n - w;
  const int32_t group = num_q_heads / num_kv_heads;
  std::vector<std::vector<float>> per_q(num_q_heads, std::vector<float>(past, 0.0f));
  std::vector<float> logits(n);
  for (int32_t h = 0; h < num_q_heads; ++h) {
    AccumulateWindowAttention(q_window, keys, n, w, num_q_heads, num_kv_heads, head_dim, h,
                              logits, per_q[h].data());
    for (float& v : per_q[h]) v /= static_cast<float>(w);
  }
  std::vector<std::vector<float>> out;
  if (group_average) {
    out.assign(num_kv_heads, std::vector<float>(past, 0.0f));
    for (int32_t k = 0; k < num_kv_heads; ++k) {
      for (int32_t g = 0; g < group; ++g) {
        const std::vector<float>& src = per_q[k * group + g];
        for (int32_t j = 0; j < past; ++j) out[k][j] += src[j];
      }
      for (float& v : out[k]) v /= static_cast<float>(group);
    }
  } else {
    out = std::move(per_q);
  }
  for (std::vector<float>& head : out) head = MaxPool(head, pool_kernel);
  return out;
}

std::vector<int32_t> SelectKept(absl::Span<const float> scores, int32_t cap, int32_t n,
                                int32_t w) {
  const int32_t past = static_cast<int32_t>(scores.size());
  HKV_CHECK(w >= 0 && past == n - w) << "scores.size()=" << past << " n=" << n << " w=" << w;
  cap = std::clamp(cap, 0, past);
  std::vector<int32_t> idx(past);
  std::iota(idx.begin(), idx.end(), 0);
  const HigherScoreFirst better{scores};
  if (cap < past) std::nth_element(idx.begin(), idx.begin() + cap, idx.end(), better);
  idx.resize(cap);
  std::sort(idx.begin(), idx.end());
  idx.reserve(cap + w);
  for (int32_t p = past; p < n; ++p) idx.push_back(p);
  return idx;
}

AdaKvShares AdaKvSplit(int32_t layer_budget, int32_t num_heads, int32_t past, float alpha) {
  HKV_CHECK(num_heads >= 1 && past >= 0) << "heads=" << num_heads << " past=" << past;
  HKV_CHECK(alpha >= 0.0f && alpha <= 1.0f) << "alpha=" << alpha;
  const int64_t budget = std::max<int64_t>(0, layer_budget);
  AdaKvShares s;
  s.total = std::min<int64_t>(budget, static_cast<int64_t>(num_heads) * past);
  s.floor_cap = static_cast<int32_t>(std::min<double>(
      past, std::floor(static_cast<double>(alpha) * static_cast<double>(budget) / num_heads)));
  return s;
}

std::vector<int32_t> AdaKvAllocate(const std::vector<std::vector<float>>& head_scores,
                                   int32_t layer_budget, float alpha) {
  const int32_t num_heads = static_cast<int32_t>(head_scores.size());
  if (num_heads == 0) return {};
  const int32_t past = static_cast<int32_t>(head_scores[0].size());
  for (const auto& h : head_scores) HKV_CHECK(static_cast<int32_t>(h.size()) == past);
  const AdaKvShares shares = AdaKvSplit(layer_budget, num_heads, past, alpha);
  const int64_t total = shares.total;
  const int32_t floor_cap = shares.floor_cap;
  std::vector<int32_t> caps(num_heads, floor_cap);
  const int64_t remaining = total - static_cast<int64_t>(floor_cap) * num_heads;
  if (remaining <= 0) return caps;

  // Candidates: each head's scores below its own top-floor_cap, as (score, head, position).
  struct Candidate {
    float score;
    int32_t head;
    int32_t pos;
  };
  std::vector<Candidate> cands;
  cands.reserve(static_cast<size_t>(num_heads) * (past - floor_cap));
  std::vector<int32_t> order(past);
  for (int32_t h = 0; h < num_heads; ++h) {
    std::iota(order.begin(), order.end(), 0);
    std::sort(order.begin(), order.end(), HigherScoreFirst{head_scores[h]});
    for (int32_t r = floor_cap; r < past; ++r) {
      cands.push_back({RankKey(head_scores[h][order[r]]), h, order[r]});
    }
  }
  auto higher = [](const Candidate& a, const Candidate& b) {
    if (a.score != b.score) return a.score > b.score;
    if (a.head != b.head) return a.head < b.head;
    return a.pos < b.pos;
  };
  std::nth_element(cands.begin(), cands.begin() + (remaining - 1), cands.end(), higher);
  for (int64_t i = 0; i < remaining; ++i) ++caps[cands[i].head];
  return caps;
}

}  // namespace hkv
