// On-device sampling; see sampling.h.
//
// NOTE(kernels): one CTA per row. top-k finds the k-th largest logit by an 8-bit radix select;
// top-p finds the probability threshold bit by bit (31 block sums; exact and deterministic);
// the draw is an inverse CDF over contiguous per-thread id ranges with a block scan.

#include "kernels/cuda_common.cuh"
#include "kernels/sampling.h"

namespace hkv::kernels {
namespace {

constexpr int kThreads = 1024;

__device__ __forceinline__ uint32_t OrderedKey(float f) {
  if (f != f) return 0u;
  if (f == 0.0f) f = 0.0f;
  const uint32_t b = __float_as_uint(f);
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

// Key of the k-th largest element (1 <= k <= n).
__device__ uint32_t RadixSelectKth(const float* x, int n, int k) {
  __shared__ int hist[256];
  __shared__ uint32_t s_prefix, s_mask;
  __shared__ int s_rem;
  if (threadIdx.x == 0) {
    s_prefix = 0;
    s_mask = 0;
    s_rem = k;
  }
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int b = threadIdx.x; b < 256; b += blockDim.x) hist[b] = 0;
    __syncthreads();
    const uint32_t prefix = s_prefix, mask = s_mask;
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
      const uint32_t u = OrderedKey(x[i]);
      if ((u & mask) == prefix) atomicAdd(&hist[(u >> shift) & 255], 1);
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      int rem = s_rem, b = 255;
      for (; b > 0 && hist[b] < rem; --b) rem -= hist[b];
      s_rem = rem;
      s_prefix = prefix | (static_cast<uint32_t>(b) << shift);
      s_mask = mask | (255u << shift);
    }
    __syncthreads();
  }
  return s_prefix;
}

__global__ void __launch_bounds__(kThreads)
    SampleKernel(const float* logits, int64_t stride, int vocab, const SamplingRow* params,
                 int32_t* out) {
  __shared__ float scratch[32];
  __shared__ float s_val[32];
  __shared__ int s_idx[32];
  __shared__ float s_scan[kThreads];
  __shared__ int s_pick;
  const float* x = logits + blockIdx.x * stride;
  const SamplingRow prm = params[blockIdx.x];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  // Argmax, ties -> lowest id, NaN never wins.
  float best = -INFINITY;
  int best_i = vocab;
  for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
    const float v = x[i];
    if (v > best || (best_i == vocab && v == v)) {
      best = v;
      best_i = i;
    }
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const float ov = __shfl_xor_sync(0xffffffffu, best, o);
    const int oi = __shfl_xor_sync(0xffffffffu, best_i, o);
    if (ov > best || (ov == best && oi < best_i)) {
      best = ov;
      best_i = oi;
    }
  }
  if (lane == 0) {
    s_val[warp] = best;
    s_idx[warp] = best_i;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int w = 1; w < static_cast<int>(blockDim.x >> 5); ++w) {
      if (s_val[w] > best || (s_val[w] == best && s_idx[w] < best_i)) {
        best = s_val[w];
        best_i = s_idx[w];
      }
    }
    s_idx[0] = best_i < vocab ? best_i : 0;
    s_val[0] = best;
  }
  __syncthreads();
  const int argmax = s_idx[0];
  const float mx = s_val[0];
  if (!(prm.temperature > 0.0f) || mx == -INFINITY) {
    if (threadIdx.x == 0) out[blockIdx.x] = argmax;
    return;
  }
  const float inv_t = 1.0f / prm.temperature;
  const uint32_t kth =
      (prm.top_k > 0 && prm.top_k < vocab) ? RadixSelectKth(x, vocab, prm.top_k) : 0u;
  auto prob = [&](int i) {
    const float v = x[i];
    if (!(v == v && OrderedKey(v) >= kth)) return 0.0f;
    const float p = __expf((v - mx) * inv_t);  // <= 1: the largest is exp(0)
    return p >= prm.min_p ? p : 0.0f;
  };
  float z = 0.0f;
  for (int i = threadIdx.x; i < vocab; i += blockDim.x) z += prob(i);
  z = BlockSum(z, scratch);
  uint32_t tau = 0;
  if (prm.top_p < 1.0f) {
    const float target = prm.top_p * z;
    for (int b = 30; b >= 0; --b) {
      const uint32_t cand = tau | (1u << b);
      float mass = 0.0f;
      for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
        const float p = prob(i);
        if (__float_as_uint(p) >= cand) mass += p;
      }
      if (BlockSum(mass, scratch) >= target) tau = cand;
    }
  }
  auto kept = [&](int i) {
    const float p = prob(i);
    return __float_as_uint(p) >= tau ? p : 0.0f;
  };
  // Inverse CDF in id order over contiguous per-thread ranges.
  const int per = (vocab + blockDim.x - 1) / blockDim.x;
  const int lo = min(vocab, static_cast<int>(threadIdx.x) * per), hi = min(vocab, lo + per);
  float local = 0.0f;
  int last_nz = -1;
  for (int i = lo; i < hi; ++i) {
    const float p = kept(i);
    local += p;
    if (p > 0.0f) last_nz = i;
  }
  s_scan[threadIdx.x] = local;
  if (threadIdx.x == 0) s_pick = -1;
  __syncthreads();
  for (int o = 1; o < static_cast<int>(blockDim.x); o <<= 1) {  // Hillis-Steele inclusive
    const float add = threadIdx.x >= o ? s_scan[threadIdx.x - o] : 0.0f;
    __syncthreads();
    s_scan[threadIdx.x] += add;
    __syncthreads();
  }
  const float total = s_scan[blockDim.x - 1];
  const float target = prm.uniform * total;
  const float before = s_scan[threadIdx.x] - local;
  if (local > 0.0f && target >= before && target < before + local) {
    float acc = before;
    int pick = last_nz;
    for (int i = lo; i < hi; ++i) {
      acc += kept(i);
      if (target < acc) {
        pick = i;
        break;
      }
    }
    atomicMax(&s_pick, pick);
  }
  __syncthreads();
  if (s_pick < 0) {  // rounding put the target past the total: take the last kept id
    if (last_nz >= 0) atomicMax(&s_pick, last_nz);
    __syncthreads();
  }
  if (threadIdx.x == 0) out[blockIdx.x] = s_pick >= 0 ? s_pick : argmax;
}

}  // namespace

cudaError_t SampleTokens(const float* logits, int64_t stride, int32_t rows, int32_t vocab,
                         const SamplingRow* params, int32_t* out, cudaStream_t stream) {
  if (rows < 0 || vocab <= 0 || stride < vocab) return cudaErrorInvalidValue;
  if (rows == 0) return cudaSuccess;
  SampleKernel<<<rows, kThreads, 0, stream>>>(logits, stride, vocab, params, out);
  return cudaGetLastError();
}

}  // namespace hkv::kernels
