#include "kernels/reference.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

namespace hkv::kernels::ref {
namespace {

uint32_t Bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
float FromBits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// Row of `kv` as a list of pointers to its tokens' K (or V) vectors.
const float* TokenPtr(const HostPagedKv& kv, const float* pool, int64_t row, int64_t t) {
  const int32_t block = kv.indices[kv.indptr[row] + t / kv.block_size];
  return pool + block * kv.block_stride + (t % kv.block_size) * kv.head_dim;
}

// softmax(q . keys * scale) . values over `count` tokens given by accessor callbacks.
template <typename KeyFn, typename ValFn>
void Attend(const float* q, int64_t count, int32_t d, float scale, KeyFn key, ValFn val,
            float* out) {
  std::fill(out, out + d, 0.0f);
  if (count == 0) return;
  std::vector<double> s(count);
  double mx = -std::numeric_limits<double>::infinity();
  for (int64_t t = 0; t < count; ++t) {
    const float* k = key(t);
    double dot = 0.0;
    for (int32_t i = 0; i < d; ++i) dot += static_cast<double>(q[i]) * k[i];
    s[t] = dot * scale;
    mx = std::max(mx, s[t]);
  }
  double sum = 0.0;
  std::vector<double> acc(d, 0.0);
  for (int64_t t = 0; t < count; ++t) {
    const double p = std::exp(s[t] - mx);
    sum += p;
    const float* v = val(t);
    for (int32_t i = 0; i < d; ++i) acc[i] += p * v[i];
  }
  for (int32_t i = 0; i < d; ++i) out[i] = static_cast<float>(acc[i] / sum);
}

}  // namespace

uint16_t FloatToBf16(float f) {
  uint32_t u = Bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40);  // NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

float Bf16ToFloat(uint16_t h) { return FromBits(static_cast<uint32_t>(h) << 16); }

uint16_t FloatToHalf(float f) {
  const uint32_t u = Bits(f);
  const uint32_t sign = (u >> 16) & 0x8000u;
  const uint32_t abs = u & 0x7fffffffu;
  if (abs > 0x7f800000u) return static_cast<uint16_t>(sign | 0x7e00u);
  if (abs >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // overflow -> inf
  if (abs < 0x38800000u) {  // subnormal or zero: round(|f| * 2^24)
    const float mag = FromBits(abs) * 16777216.0f;
    return static_cast<uint16_t>(sign | static_cast<uint32_t>(std::nearbyint(mag)));
  }
  uint32_t e = abs + 0xc8000000u;  // rebias exponent (127 -> 15) in the float bit layout
  e += 0xfffu + ((abs >> 13) & 1u);
  return static_cast<uint16_t>(sign | (e >> 13));
}

float HalfToFloat(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu, man = h & 0x3ffu;
  if (exp == 0) {
    const float mag = static_cast<float>(man) / 16777216.0f;
    return sign ? -mag : mag;
  }
  if (exp == 31) return FromBits(sign | 0x7f800000u | (man << 13));
  return FromBits(sign | ((exp + 112) << 23) | (man << 13));
}

int64_t RowLength(const HostPagedKv& kv, int64_t r) {
  const int32_t blocks = kv.indptr[r + 1] - kv.indptr[r];
  return blocks <= 0 ? 0 : static_cast<int64_t>(blocks - 1) * kv.block_size + kv.last_len[r];
}

void DecodeAttention(const float* q, const HostPagedKv& kv, int32_t num_seqs, int32_t num_q_heads,
                     float scale, float* out) {
  const int32_t d = kv.head_dim, group = num_q_heads / kv.num_kv_heads;
  for (int32_t s = 0; s < num_seqs; ++s) {
    for (int32_t h = 0; h < num_q_heads; ++h) {
      const int64_t row = static_cast<int64_t>(s) * kv.num_kv_heads + h / group;
      const int64_t off = (static_cast<int64_t>(s) * num_q_heads + h) * d;
      Attend(
          q + off, RowLength(kv, row), d, scale,
          [&](int64_t t) { return TokenPtr(kv, kv.k_pool, row, t); },
          [&](int64_t t) { return TokenPtr(kv, kv.v_pool, row, t); }, out + off);
    }
  }
}

void PrefillAttention(const float* q, const float* k, const float* v, int32_t nq,
                      int32_t num_q_heads, int32_t num_kv_heads, int32_t head_dim,
                      const HostPagedKv* prefix, int32_t seq, float scale, float* out) {
  const int32_t d = head_dim, group = num_q_heads / num_kv_heads;
  for (int32_t i = 0; i < nq; ++i) {
    for (int32_t h = 0; h < num_q_heads; ++h) {
      const int32_t kvh = h / group;
      const int64_t row = static_cast<int64_t>(seq) * num_kv_heads + kvh;
      const int64_t p = prefix == nullptr ? 0 : RowLength(*prefix, row);
      auto pick = [&](const float* dense, const float* pool) {
        return [=](int64_t t) {
          return t < p ? TokenPtr(*prefix, pool, row, t)
                       : dense + ((t - p) * num_kv_heads + kvh) * d;
        };
      };
      const int64_t off = (static_cast<int64_t>(i) * num_q_heads + h) * d;
      Attend(q + off, p + i + 1, d, scale, pick(k, prefix ? prefix->k_pool : nullptr),
             pick(v, prefix ? prefix->v_pool : nullptr), out + off);
    }
  }
}

void RmsNorm(const float* x, float* residual, const float* weight, int32_t rows, int32_t dim,
             float eps, float* out) {
  std::vector<float> h(dim);
  for (int32_t r = 0; r < rows; ++r) {
    double ss = 0.0;
    for (int32_t i = 0; i < dim; ++i) {
      h[i] = x[static_cast<int64_t>(r) * dim + i];
      if (residual != nullptr) {
        h[i] += residual[static_cast<int64_t>(r) * dim + i];
        residual[static_cast<int64_t>(r) * dim + i] = h[i];
      }
      ss += static_cast<double>(h[i]) * h[i];
    }
    const double inv = 1.0 / std::sqrt(ss / dim + eps);
    for (int32_t i = 0; i < dim; ++i) {
      out[static_cast<int64_t>(r) * dim + i] = static_cast<float>(h[i] * inv * weight[i]);
    }
  }
}

void Rope(float* x, int32_t tokens, int32_t heads, int32_t head_dim, const int32_t* pos,
          float theta, const float* inv_freq, bool interleaved) {
  const int32_t half = head_dim / 2;
  for (int32_t t = 0; t < tokens; ++t) {
    for (int32_t h = 0; h < heads; ++h) {
      float* v = x + (static_cast<int64_t>(t) * heads + h) * head_dim;
      for (int32_t i = 0; i < half; ++i) {
        const double f = inv_freq != nullptr
                             ? inv_freq[i]
                             : std::pow(static_cast<double>(theta), -2.0 * i / head_dim);
        const double ang = static_cast<double>(pos[t]) * f;
        const double c = std::cos(ang), s = std::sin(ang);
        const int32_t a = interleaved ? 2 * i : i, b = interleaved ? 2 * i + 1 : i + half;
        const double xa = v[a], xb = v[b];
        v[a] = static_cast<float>(xa * c - xb * s);
        v[b] = static_cast<float>(xb * c + xa * s);
      }
    }
  }
}

void SwiGlu(const float* gate, const float* up, int64_t n, float* out) {
  for (int64_t i = 0; i < n; ++i) {
    const double g = gate[i];
    out[i] = static_cast<float>(g / (1.0 + std::exp(-g)) * up[i]);
  }
}

std::vector<double> SamplingDistribution(const float* logits, int32_t vocab, float temperature,
                                         int32_t top_k, float top_p) {
  std::vector<double> p(vocab, 0.0);
  int32_t arg = 0;
  for (int32_t i = 1; i < vocab; ++i) {
    if (logits[i] > logits[arg]) arg = i;
  }
  if (!(temperature > 0.0f)) {
    p[arg] = 1.0;
    return p;
  }
  std::vector<float> sorted(logits, logits + vocab);
  std::sort(sorted.begin(), sorted.end(), std::greater<float>());
  const float kth =
      (top_k > 0 && top_k < vocab) ? sorted[top_k - 1] : -std::numeric_limits<float>::infinity();
  double z = 0.0;
  for (int32_t i = 0; i < vocab; ++i) {
    if (logits[i] >= kth)
      p[i] = std::exp((static_cast<double>(logits[i]) - logits[arg]) / temperature);
    z += p[i];
  }
  for (double& x : p) x /= z;
  if (top_p < 1.0f) {
    std::vector<double> desc(p);
    std::sort(desc.begin(), desc.end(), std::greater<double>());
    double mass = 0.0, tau = 0.0;
    for (double x : desc) {
      mass += x;
      tau = x;
      if (mass >= top_p) break;
    }
    double kept = 0.0;
    for (double& x : p) {
      if (x < tau) x = 0.0;
      kept += x;
    }
    for (double& x : p) x /= kept;
  }
  return p;
}

void MatmulRowMajor(const float* a, const float* w, float* c, int32_t m, int32_t n, int32_t k) {
  for (int32_t i = 0; i < m; ++i) {
    for (int32_t j = 0; j < n; ++j) {
      double acc = 0.0;
      for (int32_t t = 0; t < k; ++t) {
        acc += static_cast<double>(a[static_cast<int64_t>(i) * k + t]) *
               w[static_cast<int64_t>(j) * k + t];
      }
      c[static_cast<int64_t>(i) * n + j] = static_cast<float>(acc);
    }
  }
}

void AttentionProbe(const float* q, const HostPagedKv& kv, int64_t row, int32_t prompt_len,
                    int32_t top_n, float scale, int32_t* positions, float* weights) {
  const int64_t len = RowLength(kv, row);
  std::vector<double> p(len);
  double mx = -std::numeric_limits<double>::infinity(), sum = 0;
  for (int64_t t = 0; t < len; ++t) {
    const float* k = TokenPtr(kv, kv.k_pool, row, t);
    double s = 0;
    for (int32_t i = 0; i < kv.head_dim; ++i) s += static_cast<double>(q[i]) * k[i];
    p[t] = s * scale;
    mx = std::max(mx, p[t]);
  }
  for (double& e : p) sum += (e = std::exp(e - mx));
  std::vector<bool> taken(prompt_len, false);
  for (int32_t r = 0; r < top_n; ++r) {  // Plain selection: the best not yet taken.
    int32_t best = -1;
    for (int32_t t = 0; t < prompt_len; ++t) {
      if (!taken[t] && (best < 0 || p[t] > p[best])) best = t;
    }
    taken[best] = true;
    positions[r] = best;
    weights[r] = static_cast<float>(p[best] / sum);
  }
}

void GatherPageTable(const int32_t* segments, int32_t num_segments, const int32_t* prev,
                     const int32_t* upload, int32_t* out) {
  for (int32_t s = 0; s < num_segments; ++s) {
    const int32_t* seg = segments + 4 * static_cast<int64_t>(s);
    const int32_t* from = (seg[3] != 0 ? upload : prev) + seg[1];
    for (int32_t i = 0; i < seg[2]; ++i) out[seg[0] + i] = from[i];
  }
}

}  // namespace hkv::kernels::ref
