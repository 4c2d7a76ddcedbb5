#pragma once
// The rotary embedding of one head, shared by the Rope kernel (layer_ops.cu) and the fused
// RoPE + KV append (rope_kv_append.cu), so both round identically. Include from .cu files.
//
// Thread-safe: stateless device functions.

#include "kernels/cuda_common.cuh"

namespace hkv::kernels::rope_internal {

// Rotates pairs i = lane_base, lane_base + stride, ... (< head_dim / 2) of head x in place.
template <typename T>
__device__ void RopeHead(T* x, int head_dim, float posf, float theta, const float* inv_freq,
                         bool interleaved, int lane_base, int stride) {
  const int half = head_dim / 2;
  for (int i = lane_base; i < half; i += stride) {
    const float freq =
        inv_freq != nullptr ? inv_freq[i] : powf(theta, -2.0f * i / static_cast<float>(head_dim));
    float s, c;
    sincosf(posf * freq, &s, &c);
    const int a = interleaved ? 2 * i : i, b = interleaved ? 2 * i + 1 : i + half;
    const float xa = ToFloat<T>(x[a]), xb = ToFloat<T>(x[b]);
    x[a] = FromFloat<T>(xa * c - xb * s);
    x[b] = FromFloat<T>(xb * c + xa * s);
  }
}

}  // namespace hkv::kernels::rope_internal
