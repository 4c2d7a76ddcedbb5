// Fused RoPE + paged K/V write; see rope_kv_append.h.

#include <algorithm>

#include "kernels/cuda_common.cuh"
#include "kernels/rope.cuh"
#include "kernels/rope_kv_append.h"

namespace hkv::kernels {
namespace {

using rope_internal::RopeEightPairs;
using rope_internal::RopeHead;
using rope_internal::RopeVectorizable;

struct Params {
  void* qkv;
  int64_t stride, k_offset, v_offset;
  int hq, hk, head_dim;
  const int32_t* pos;
  float theta;
  const float* inv_freq;
  bool interleaved;
  const int64_t* slots;
  int append_tokens;
  uint4* k_pool;  // 16-byte chunks
  uint4* v_pool;
  int64_t block_stride_chunks;
  int block_size;
  int heads_per_block;  // vector kernel: whole heads (q heads, then k heads) per block
};

// Writes token t's K (rotated, at k) and V heads [first_kv, last_kv) to their pool slots
// (negative slots skipped), 16 bytes a thread step; both kernels end with it.
template <typename T>
__device__ void WriteKv(const Params& p, int64_t t, const T* q, const T* k, int first_kv,
                        int last_kv) {
  const int chunks = p.head_dim / 8;
  const uint4* kc = reinterpret_cast<const uint4*>(k);
  const uint4* vc = reinterpret_cast<const uint4*>(q + p.v_offset);
  for (int idx = first_kv * chunks + threadIdx.x; idx < last_kv * chunks; idx += blockDim.x) {
    const int h = idx / chunks, c = idx % chunks;
    const int64_t slot = p.slots[t * p.hk + h];
    if (slot < 0) continue;
    const int64_t dst =
        (slot / p.block_size) * p.block_stride_chunks + (slot % p.block_size) * chunks + c;
    p.k_pool[dst] = kc[idx];
    p.v_pool[dst] = vc[idx];
  }
}

template <typename T>
__global__ void RopeKvAppendKernel(Params p) {
  WaitForPriorGrid();
  AllowDependentsIfSmallGrid();
  const int64_t t = blockIdx.x;
  T* q = static_cast<T*>(p.qkv) + t * p.stride;
  T* k = q + p.k_offset;
  const float posf = static_cast<float>(p.pos[t]);
  const int half = p.head_dim / 2;
  // The Rope kernel's loop: one (head, pair) per thread step, q heads then k heads.
  for (int idx = threadIdx.x; idx < (p.hq + p.hk) * half; idx += blockDim.x) {
    const int h = idx / half, i = idx % half;
    T* x = h < p.hq ? q + static_cast<int64_t>(h) * p.head_dim
                    : k + static_cast<int64_t>(h - p.hq) * p.head_dim;
    RopeHead<T>(x, p.head_dim, posf, p.theta, p.inv_freq, p.interleaved, i, half);
  }
  if (t >= p.append_tokens) return;  // the whole block
  __syncthreads();                   // the rotated k is in global memory, visible to the block
  WriteKv<T>(p, t, q, k, 0, p.hk);
}

// RopeKvAppendKernel with 16-byte rotations (RopeEightPairs, as the vector Rope kernel) and
// a token's heads spread over gridDim.y blocks of whole heads: the block that rotates k head h
// also writes head h's K and V, after a barrier.
template <typename T>
__global__ void RopeKvAppendVectorKernel(Params p) {
  WaitForPriorGrid();
  AllowDependentsIfSmallGrid();
  __shared__ float2 cs[rope_internal::kRopeTablePairs];
  const int64_t t = blockIdx.x;
  T* q = static_cast<T*>(p.qkv) + t * p.stride;
  T* k = q + p.k_offset;
  rope_internal::RopeTableToShared(cs, static_cast<float>(p.pos[t]), p.head_dim, p.theta,
                                   p.inv_freq);
  const int units_per_head = p.head_dim / 16;
  const int first_head = blockIdx.y * p.heads_per_block;
  const int last_head = min(first_head + p.heads_per_block, p.hq + p.hk);
  for (int idx = first_head * units_per_head + threadIdx.x; idx < last_head * units_per_head;
       idx += blockDim.x) {
    const int h = idx / units_per_head, i0 = (idx % units_per_head) * 8;
    T* x = h < p.hq ? q + static_cast<int64_t>(h) * p.head_dim
                    : k + static_cast<int64_t>(h - p.hq) * p.head_dim;
    RopeEightPairs<T>(x, p.head_dim, cs, p.interleaved, i0);
  }
  const int first_kv = max(first_head - p.hq, 0), last_kv = last_head - p.hq;
  if (t >= p.append_tokens || last_kv <= first_kv) return;  // the whole block
  __syncthreads();  // the rotated k is in global memory, visible to the block
  WriteKv<T>(p, t, q, k, first_kv, last_kv);
}

}  // namespace

cudaError_t RopeKvAppend(const RopeKvAppendArgs& a, const PagedKvView& kv, cudaStream_t stream) {
  if (a.tokens < 0 || a.append_tokens < 0 || a.append_tokens > a.tokens || kv.head_dim <= 0 ||
      kv.head_dim % 8 != 0 || kv.block_stride % 8 != 0 || a.stride % 8 != 0 ||
      a.k_offset % 8 != 0 || a.v_offset % 8 != 0 || kv.num_kv_heads < 1 || kv.block_size < 1 ||
      a.num_q_heads < 0 || (a.append_tokens > 0 && a.slots == nullptr)) {
    return cudaErrorInvalidValue;
  }
  if (a.tokens == 0) return cudaSuccess;
  Params p;
  p.qkv = a.qkv;
  p.stride = a.stride;
  p.k_offset = a.k_offset;
  p.v_offset = a.v_offset;
  p.hq = a.num_q_heads;
  p.hk = kv.num_kv_heads;
  p.head_dim = kv.head_dim;
  p.pos = a.pos;
  p.theta = a.theta;
  p.inv_freq = a.inv_freq;
  p.interleaved = a.style == RopeStyle::kInterleaved;
  p.slots = a.slots;
  p.append_tokens = a.append_tokens;
  p.k_pool = static_cast<uint4*>(const_cast<void*>(kv.k_pool));
  p.v_pool = static_cast<uint4*>(const_cast<void*>(kv.v_pool));
  p.block_stride_chunks = kv.block_stride / 8;
  p.block_size = kv.block_size;
  const bool vector = RopeVectorizable(a.qkv, a.stride, kv.head_dim);
  return DispatchDType(a.dtype, [&](auto t) {
    using T = decltype(t);
    if (vector) {
      // About 128 rotations (eight pairs each) a block, in whole heads.
      p.heads_per_block = std::max(1, 128 / (kv.head_dim / 16));
      const int heads = p.hq + p.hk;
      const dim3 grid(a.tokens, (heads + p.heads_per_block - 1) / p.heads_per_block);
      return LaunchOverlapped(RopeKvAppendVectorKernel<T>, grid, dim3(128), 0, stream, p);
    }
    return LaunchOverlapped(RopeKvAppendKernel<T>, dim3(a.tokens), dim3(128), 0, stream, p);
  });
}

}  // namespace hkv::kernels
