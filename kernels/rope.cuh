#pragma once
// The rotary embedding of one head, shared by the Rope kernel (layer_ops.cu) and the fused
// RoPE + KV append (rope_kv_append.cu), so both round identically. Include from .cu files.
//
// Thread-safe: stateless device functions.

#include "kernels/cuda_common.cuh"

namespace hkv::kernels::rope_internal {

// The rotated pair (xa, xb) by the angle of cosine c and sine s, with the rounding spelled out
// (one product, then one fused multiply-add) so that every kernel gives the same bits whatever
// the compiler would contract.
__device__ __forceinline__ float RotatedFirst(float xa, float xb, float c, float s) {
  return __fmaf_rn(xa, c, -__fmul_rn(xb, s));
}
__device__ __forceinline__ float RotatedSecond(float xa, float xb, float c, float s) {
  return __fmaf_rn(xb, c, __fmul_rn(xa, s));
}

// (cos, sin) of pair i's angle at position posf: the one formula every RoPE kernel uses.
__device__ __forceinline__ float2 RopeCosSin(float posf, int i, int head_dim, float theta,
                                             const float* inv_freq) {
  const float freq =
      inv_freq != nullptr ? inv_freq[i] : powf(theta, -2.0f * i / static_cast<float>(head_dim));
  float s, c;
  sincosf(posf * freq, &s, &c);
  return make_float2(c, s);
}

// Pairs a token's RoPE table in shared memory holds: head_dim <= 2 * kRopeTablePairs.
inline constexpr int kRopeTablePairs = 256;

// Fills cs[0 .. head_dim / 2) with the token's (cos, sin) per pair, once for all the heads a
// block rotates (one sincosf per pair and head cost a 32k prefill's RoPE as much as its memory
// traffic). Every thread of the block calls it (it ends in a barrier).
__device__ __forceinline__ void RopeTableToShared(float2* cs, float posf, int head_dim, float theta,
                                                  const float* inv_freq) {
  for (int i = threadIdx.x; i < head_dim / 2; i += blockDim.x) {
    cs[i] = RopeCosSin(posf, i, head_dim, theta, inv_freq);
  }
  __syncthreads();
}

// Rotates pairs i = lane_base, lane_base + stride, ... (< head_dim / 2) of head x in place.
template <typename T>
__device__ void RopeHead(T* x, int head_dim, float posf, float theta, const float* inv_freq,
                         bool interleaved, int lane_base, int stride) {
  const int half = head_dim / 2;
  for (int i = lane_base; i < half; i += stride) {
    const float2 cs = RopeCosSin(posf, i, head_dim, theta, inv_freq);
    const float c = cs.x, s = cs.y;
    const int a = interleaved ? 2 * i : i, b = interleaved ? 2 * i + 1 : i + half;
    const float xa = ToFloat<T>(x[a]), xb = ToFloat<T>(x[b]);
    x[a] = FromFloat<T>(RotatedFirst(xa, xb, c, s));
    x[b] = FromFloat<T>(RotatedSecond(xa, xb, c, s));
  }
}

// Rotates pairs i0 .. i0 + 7 of head x in place with 16-byte loads and stores, the angles from
// the token's table `cs` (RopeTableToShared): the same arithmetic per pair as RopeHead, so
// both give the same bits.
// REQUIRES: i0 % 8 == 0, i0 + 8 <= head_dim / 2, x 16-byte aligned.
template <typename T>
__device__ __forceinline__ void RopeEightPairs(T* x, int head_dim, const float2* cs,
                                               bool interleaved, int i0) {
  const int half = head_dim / 2;
  // Rotate-half: elements i0.. and half + i0..; interleaved: 2 * i0 .. 2 * i0 + 15.
  uint4* pa = reinterpret_cast<uint4*>(x + (interleaved ? 2 * i0 : i0));
  uint4* pb = reinterpret_cast<uint4*>(x + (interleaved ? 2 * i0 + 8 : i0 + half));
  float a[8], b[8];
  Unpack8<T>(*pa, a);
  Unpack8<T>(*pb, b);
  float ra[8], rb[8];
#pragma unroll
  for (int j = 0; j < 8; ++j) {
    const float c = cs[i0 + j].x, s = cs[i0 + j].y;
    // The pair's two elements: (a[j], b[j]) rotate-half; interleaved, pair j sits at
    // elements 2j, 2j + 1 of the 16 loaded (a holds pairs 0-3, b pairs 4-7).
    float* ea = interleaved ? (j < 4 ? &a[2 * j] : &b[2 * j - 8]) : &a[j];
    float* eb = interleaved ? (j < 4 ? &a[2 * j + 1] : &b[2 * j - 7]) : &b[j];
    float* oa = interleaved ? (j < 4 ? &ra[2 * j] : &rb[2 * j - 8]) : &ra[j];
    float* ob = interleaved ? (j < 4 ? &ra[2 * j + 1] : &rb[2 * j - 7]) : &rb[j];
    const float xa = *ea, xb = *eb;
    *oa = RotatedFirst(xa, xb, c, s);
    *ob = RotatedSecond(xa, xb, c, s);
  }
  *pa = Pack8<T>(ra);
  *pb = Pack8<T>(rb);
}

// Whether heads at `x` (and every head_stride elements from it) can use RopeEightPairs.
inline bool RopeVectorizable(const void* x, int64_t token_stride, int head_dim) {
  return head_dim % 16 == 0 && head_dim <= 2 * kRopeTablePairs && token_stride % 8 == 0 &&
         reinterpret_cast<uintptr_t>(x) % 16 == 0;
}

}  // namespace hkv::kernels::rope_internal
