// Penalties and log-probabilities; see logits_processing.h.
//
// NOTE(kernels): one CTA per row. The top-k of ComputeLogprobs is k rounds of a block argmax
// that skips the ids already taken: O(k * vocab) reads, small next to the LM head that made the
// logits (k <= 20), and exact (ties to the lower id, as the CPU reference).

#include "kernels/cuda_common.cuh"
#include "kernels/logits_processing.h"

namespace hkv::kernels {
namespace {

constexpr int kPenaltyThreads = 256;
constexpr int kLogprobThreads = 1024;
constexpr int kMaxTop = 32;

__global__ void __launch_bounds__(kPenaltyThreads)
    PenaltyKernel(float* logits, int64_t stride, int vocab, const PenaltyRow* params,
                  const int32_t* indptr, const int32_t* ids, const int32_t* counts) {
  float* x = logits + blockIdx.x * stride;
  const PenaltyRow p = params[blockIdx.x];
  const int begin = indptr[blockIdx.x], end = indptr[blockIdx.x + 1];
  for (int e = begin + threadIdx.x; e < end; e += blockDim.x) {
    const int t = ids[e], c = counts[e];
    if (c < 0 || t < 0 || t >= vocab) continue;
    float l = x[t];
    if (p.repetition != 1.0f) l = l > 0.0f ? l / p.repetition : l * p.repetition;
    // Rounded as the CPU reference computes it (no fused multiply-add).
    if (c > 0)
      l = __fsub_rn(l, __fadd_rn(__fmul_rn(p.frequency, static_cast<float>(c)), p.presence));
    x[t] = l;
  }
  __syncthreads();  // bans last: a banned token may also have a penalty entry
  if (!p.ban) return;
  for (int e = begin + threadIdx.x; e < end; e += blockDim.x) {
    const int t = ids[e];
    if (counts[e] < 0 && t >= 0 && t < vocab) x[t] = -INFINITY;
  }
}

// Largest (value, lowest id) over the block, skipping ids in taken[0..n); every thread gets it.
__device__ void BlockArgmax(const float* x, int vocab, const int* taken, int n, float* out_v,
                            int* out_i) {
  __shared__ float s_v[32];
  __shared__ int s_i[32];
  float best = -INFINITY;
  int best_i = vocab;
  for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
    bool skip = false;
    for (int j = 0; j < n; ++j) skip |= taken[j] == i;
    const float v = x[i];
    if (skip || v != v) continue;
    if (best_i == vocab || v > best) {
      best = v;
      best_i = i;
    }
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const float ov = __shfl_xor_sync(0xffffffffu, best, o);
    const int oi = __shfl_xor_sync(0xffffffffu, best_i, o);
    if (oi < vocab && (best_i == vocab || ov > best || (ov == best && oi < best_i))) {
      best = ov;
      best_i = oi;
    }
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  __syncthreads();
  if (lane == 0) {
    s_v[warp] = best;
    s_i[warp] = best_i;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int w = 1; w < static_cast<int>(blockDim.x >> 5); ++w) {
      if (s_i[w] < vocab &&
          (best_i == vocab || s_v[w] > best || (s_v[w] == best && s_i[w] < best_i))) {
        best = s_v[w];
        best_i = s_i[w];
      }
    }
    s_v[0] = best;
    s_i[0] = best_i;
  }
  __syncthreads();
  *out_v = s_v[0];
  *out_i = s_i[0];
  __syncthreads();
}

__global__ void __launch_bounds__(kLogprobThreads)
    LogprobKernel(const float* logits, int64_t stride, int vocab, const int32_t* tokens, int top,
                  float* out_logprob, int32_t* out_top_ids, float* out_top_logprobs) {
  __shared__ float scratch[32];
  __shared__ int taken[kMaxTop];
  const float* x = logits + blockIdx.x * stride;
  float mx = -INFINITY;
  for (int i = threadIdx.x; i < vocab; i += blockDim.x) mx = fmaxf(mx, x[i]);
  mx = BlockMax(mx, scratch);
  float z = 0.0f;
  for (int i = threadIdx.x; i < vocab; i += blockDim.x) z += expf(x[i] - mx);
  z = BlockSum(z, scratch);
  const float log_z = mx + logf(z);
  const int token = tokens[blockIdx.x];
  if (threadIdx.x == 0) {
    out_logprob[blockIdx.x] = (token >= 0 && token < vocab) ? x[token] - log_z : -INFINITY;
  }
  for (int k = 0; k < top; ++k) {
    float v;
    int id;
    BlockArgmax(x, vocab, taken, k, &v, &id);
    if (threadIdx.x == 0) {
      taken[k] = id;
      out_top_ids[blockIdx.x * top + k] = id < vocab ? id : -1;
      out_top_logprobs[blockIdx.x * top + k] = id < vocab ? v - log_z : -INFINITY;
    }
    __syncthreads();
  }
}

}  // namespace

cudaError_t ApplyPenalties(float* logits, int64_t stride, int32_t rows, int32_t vocab,
                           const PenaltyRow* params, const int32_t* indptr, const int32_t* ids,
                           const int32_t* counts, cudaStream_t stream) {
  if (rows < 0 || vocab <= 0 || stride < vocab) return cudaErrorInvalidValue;
  if (rows == 0) return cudaSuccess;
  PenaltyKernel<<<rows, kPenaltyThreads, 0, stream>>>(logits, stride, vocab, params, indptr, ids,
                                                      counts);
  return cudaGetLastError();
}

cudaError_t ComputeLogprobs(const float* logits, int64_t stride, int32_t rows, int32_t vocab,
                            const int32_t* tokens, int32_t top, float* out_logprob,
                            int32_t* out_top_ids, float* out_top_logprobs, cudaStream_t stream) {
  if (rows < 0 || vocab <= 0 || stride < vocab || top < 0 || top > kMaxTop) {
    return cudaErrorInvalidValue;
  }
  if (rows == 0) return cudaSuccess;
  LogprobKernel<<<rows, kLogprobThreads, 0, stream>>>(logits, stride, vocab, tokens, top,
                                                      out_logprob, out_top_ids, out_top_logprobs);
  return cudaGetLastError();
}

}  // namespace hkv::kernels
