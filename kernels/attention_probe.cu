// Attention probes; see attention_probe.h.

#include "kernels/attention_probe.h"
#include "kernels/cuda_common.cuh"

namespace hkv::kernels {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;

// PagedKvView::Row on the device.
__device__ __forceinline__ int64_t KvRow(const PagedKvView& kv, int64_t seq, int32_t kv_head) {
  return seq * (kv.row_seq_stride > 0 ? kv.row_seq_stride : kv.num_kv_heads) + kv.row_offset +
         kv_head;
}

__device__ __forceinline__ int32_t RowLength(const PagedKvView& kv, int64_t r) {
  const int32_t blocks = kv.indptr[r + 1] - kv.indptr[r];
  return blocks <= 0 ? 0 : (blocks - 1) * kv.block_size + kv.last_len[r];
}

// logits[p, h, j] = q[p, h] . k[j] * scale for j < the row's length; one warp a position.
template <typename T, int kHeadDim>
__global__ void ProbeLogitsKernel(AttentionProbeArgs a) {
  constexpr int kPer = kHeadDim / 32;
  const int p = blockIdx.y / a.num_q_heads, h = blockIdx.y % a.num_q_heads;
  const int group = a.num_q_heads / a.kv.num_kv_heads;
  const int32_t* meta = a.meta + 4 * p;
  const int64_t row = KvRow(a.kv, meta[1], h / group);
  const int32_t len = RowLength(a.kv, row);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int32_t j = blockIdx.x * kWarps + warp;
  if (j >= len) return;
  const T* q =
      static_cast<const T*>(a.q) + meta[0] * a.q_row_stride + static_cast<int64_t>(h) * kHeadDim;
  const int32_t block = a.kv.indices[a.kv.indptr[row] + j / a.kv.block_size];
  const T* k = static_cast<const T*>(a.kv.k_pool) + int64_t{block} * a.kv.block_stride +
               static_cast<int64_t>(j % a.kv.block_size) * kHeadDim;
  float s = 0.0f;
#pragma unroll
  for (int i = 0; i < kPer; ++i) s += ToFloat(q[lane + 32 * i]) * ToFloat(k[lane + 32 * i]);
  s = WarpSum(s);
  if (lane == 0) {
    a.logits[(static_cast<int64_t>(p) * a.num_q_heads + h) * a.max_len + j] = s * a.scale;
  }
}

// The better of two (value, position) candidates: higher value, then lower position.
__device__ __forceinline__ void Better(float& v, int& i, float ov, int oi) {
  if (ov > v || (ov == v && oi >= 0 && (i < 0 || oi < i))) {
    v = ov;
    i = oi;
  }
}

// Softmax max and sum over the row, then top_n rounds of block argmax over the prompt prefix;
// each winner is written out and masked (-inf) in the workspace.
__global__ void ProbeTopNKernel(AttentionProbeArgs a) {
  __shared__ float scratch[32];
  __shared__ float best_v[kWarps];
  __shared__ int best_i[kWarps];
  const int p = blockIdx.x / a.num_q_heads, h = blockIdx.x % a.num_q_heads;
  const int group = a.num_q_heads / a.kv.num_kv_heads;
  const int32_t* meta = a.meta + 4 * p;
  const int32_t len = RowLength(a.kv, KvRow(a.kv, meta[1], h / group));
  const int32_t prompt = min(meta[2], len), top = min(min(meta[3], prompt), a.max_top_n);
  float* row = a.logits + (static_cast<int64_t>(p) * a.num_q_heads + h) * a.max_len;
  float m = -INFINITY;
  for (int32_t j = threadIdx.x; j < len; j += kThreads) m = fmaxf(m, row[j]);
  m = BlockMax(m, scratch);
  float sum = 0.0f;
  for (int32_t j = threadIdx.x; j < len; j += kThreads) sum += expf(row[j] - m);
  sum = BlockSum(sum, scratch);
  const int64_t out = (static_cast<int64_t>(p) * a.num_q_heads + h) * a.max_top_n;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int32_t round = 0; round < top; ++round) {
    float v = -INFINITY;
    int i = -1;
    for (int32_t j = threadIdx.x; j < prompt; j += kThreads) Better(v, i, row[j], j);
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      const float ov = __shfl_xor_sync(0xffffffffu, v, o);
      const int oi = __shfl_xor_sync(0xffffffffu, i, o);
      Better(v, i, ov, oi);
    }
    if (lane == 0) {
      best_v[warp] = v;
      best_i[warp] = i;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      for (int w = 1; w < kWarps; ++w) Better(v, i, best_v[w], best_i[w]);
      a.positions[out + round] = i;
      a.weights[out + round] = expf(v - m) / sum;
      row[i] = -INFINITY;  // Taken: later rounds skip it.
    }
    __syncthreads();
  }
}

}  // namespace

size_t AttentionProbeWorkspaceBytes(int32_t num_probes, int32_t num_q_heads, int32_t max_len) {
  return static_cast<size_t>(num_probes) * num_q_heads * max_len * sizeof(float);
}

cudaError_t RunAttentionProbe(const AttentionProbeArgs& a, cudaStream_t stream) {
  if (a.num_probes == 0) return cudaSuccess;
  if (a.num_probes < 0 || a.max_len < 1 || a.max_top_n < 1 || a.max_top_n > kMaxProbeTopN ||
      a.kv.num_kv_heads < 1 || a.num_q_heads % a.kv.num_kv_heads != 0 || a.q == nullptr ||
      a.meta == nullptr || a.logits == nullptr || a.positions == nullptr || a.weights == nullptr) {
    return cudaErrorInvalidValue;
  }
  return DispatchDType(a.dtype, [&](auto t) {
    using T = decltype(t);
    return DispatchHeadDim(a.kv.head_dim, [&](auto d) {
      const dim3 grid((a.max_len + kWarps - 1) / kWarps, a.num_probes * a.num_q_heads);
      ProbeLogitsKernel<T, decltype(d)::value><<<grid, kThreads, 0, stream>>>(a);
      ProbeTopNKernel<<<a.num_probes * a.num_q_heads, kThreads, 0, stream>>>(a);
      return cudaGetLastError();
    });
  });
}

}  // namespace hkv::kernels
