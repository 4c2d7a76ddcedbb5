#include "workers/sampler.h"

#include <algorithm>
#include <cmath>
#include <limits>
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
  if (p.min_p > 0.0f) {
    // probs[0] is the largest (exp(0) = 1): keep those at least min_p of it.
    size_t cut = 1;
    while (cut < keep && probs[cut] >= p.min_p) ++cut;
    keep = cut;
    total = 0;
    for (size_t i = 0; i < keep; ++i) total += probs[i];
  }
  if (p.top_p < 1.0f) {
    double cumulative = 0;
    for (size_t i = 0; i < keep; ++i) {
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

void ApplyPenalties(absl::Span<float> logits, const StepSampling& p, const TokenHistory& h) {
  const int64_t n = static_cast<int64_t>(logits.size());
  auto in_vocab = [n](TokenId t) { return t >= 0 && t < n; };
  if (p.repetition_penalty != 1.0f) {
    for (TokenId t : h.seen) {
      if (!in_vocab(t)) continue;
      float& l = logits[t];
      l = l > 0.0f ? l / p.repetition_penalty : l * p.repetition_penalty;
    }
  }
  if (p.frequency_penalty != 0.0f || p.presence_penalty != 0.0f) {
    for (const auto& [t, count] : h.output_counts) {
      if (in_vocab(t)) logits[t] -= p.frequency_penalty * count + p.presence_penalty;
    }
  }
  if (h.num_generated < p.min_tokens && !h.min_tokens_banned.empty()) {
    std::vector<char> banned(n, 0);
    int64_t num_banned = 0;
    for (TokenId t : h.min_tokens_banned) {
      if (in_vocab(t) && !banned[t]) {
        banned[t] = 1;
        ++num_banned;
      }
    }
    if (num_banned == n) return;  // Nothing could be sampled: min_tokens gives way.
    for (int64_t i = 0; i < n; ++i) {
      if (banned[i]) logits[i] = -std::numeric_limits<float>::infinity();
    }
  }
}

TokenLogprobs ComputeLogprobs(absl::Span<const float> logits, TokenId token, int32_t top) {
  const int32_t n = static_cast<int32_t>(logits.size());
  float max_logit = -std::numeric_limits<float>::infinity();
  for (float l : logits) max_logit = std::max(max_logit, l);
  double sum = 0;
  for (float l : logits) sum += std::exp(static_cast<double>(l) - max_logit);
  const double log_z = max_logit + std::log(sum);
  TokenLogprobs out;
  out.token = token;
  out.logprob = static_cast<float>(logits[token] - log_z);
  const int32_t k = std::min(top, n);
  if (k <= 0) return out;
  std::vector<int32_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::partial_sort(order.begin(), order.begin() + k, order.end(), [&](int32_t a, int32_t b) {
    return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
  });
  for (int32_t i = 0; i < k; ++i) {
    out.top_ids.push_back(order[i]);
    out.top_logprobs.push_back(static_cast<float>(logits[order[i]] - log_z));
  }
  return out;
}

void SampleSequence(const SequenceStep& step, const TokenHistories& histories,
                    std::vector<float>& logits, SequenceResult* result) {
  const StepSampling& p = step.sampling;
  std::vector<float> raw;
  if (p.logprobs >= 0) raw = logits;
  if (p.uses_history()) {
    if (const TokenHistory* h = histories.Find(step.id))
      ApplyPenalties(absl::MakeSpan(logits), p, *h);
  }
  const int32_t samples = std::max(step.num_samples, 1);
  for (int32_t i = 0; i < samples; ++i) {
    StepSampling pi = p;
    pi.seed = SampleSeed(p.seed, i);
    const TokenId t = SampleToken(logits, pi, step.sample_step);
    if (i == 0) {
      result->token = t;
    } else {
      result->extra_tokens.push_back(t);
    }
    if (p.logprobs >= 0) result->logprobs.push_back(ComputeLogprobs(raw, t, p.logprobs));
  }
}

}  // namespace hkv
