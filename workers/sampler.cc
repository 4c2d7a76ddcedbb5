#include "workers/sampler.h"

#include <algorithm>
#include <cmath>
#include <numeric>

namespace hkv {
namespace {

uint64_t SplitMix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ULL;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
  return x ^ (x >> 31);
}

}  // namespace

double SampleUniform(uint64_t seed, int64_t step) {
  const uint64_t bits = SplitMix64(SplitMix64(seed) ^ static_cast<uint64_t>(step));
  return static_cast<double>(bits >> 11) * (1.0 / 9007199254740992.0);  // 53 bits.
}

TokenId SampleToken(absl::Span<const float> logits, const StepSampling& p, int64_t step) {
  const int32_t n = static_cast<int32_t>(logits.size());
  if (p.temperature <= 0.0f || p.top_k == 1) {
    int32_t best = 0;
    for (int32_t i = 1; i < n; ++i) {
      if (logits[i] > logits[best]) best = i;
    }
    return best;
  }
  std::vector<int32_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  // Descending by logit, lower id first on ties: a deterministic candidate order.
  auto by_logit = [&](int32_t a, int32_t b) {
    return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
  };
  int32_t k = p.top_k > 0 ? std::min(p.top_k, n) : n;
  if (k < n) {
    std::partial_sort(order.begin(), order.begin() + k, order.end(), by_logit);
    order.resize(k);
  } else {
    std::sort(order.begin(), order.end(), by_logit);
  }
  std::vector<double> probs(order.size());
  const double max_logit = logits[order[0]];
  double total = 0;
  for (size_t i = 0; i < order.size(); ++i) {
    probs[i] = std::exp((logits[order[i]] - max_logit) / p.temperature);
    total += probs[i];
  }
  size_t keep = order.size();
  if (p.top_p < 1.0f) {
    double cumulative = 0;
    for (size_t i = 0; i < order.size(); ++i) {
      cumulative += probs[i] / total;
      if (cumulative >= p.top_p) {
        keep = i + 1;
        break;
      }
    }
  }
  double kept_total = 0;
  for (size_t i = 0; i < keep; ++i) kept_total += probs[i];
  const double u = SampleUniform(p.seed, step) * kept_total;
  double cumulative = 0;
  for (size_t i = 0; i < keep; ++i) {
    cumulative += probs[i];
    if (u < cumulative) return order[i];
  }
  return order[keep - 1];
}

}  // namespace hkv
