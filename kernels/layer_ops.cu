// Row-wise and element-wise layer kernels; see layer_ops.h.

#include <algorithm>
#include <cmath>

#include "kernels/cuda_common.cuh"
#include "kernels/layer_ops.h"
#include "kernels/rope.cuh"

namespace hkv::kernels {
namespace {

using rope_internal::RopeEightPairs;
using rope_internal::RopeHead;
using rope_internal::RopeVectorizable;

// silu(g) * u, shared by the scalar and vector SwiGLU kernels so both give the same bits.
__device__ __forceinline__ float SiluTimes(float g, float u) { return g / (1.0f + __expf(-g)) * u; }

template <typename T>
__global__ void RmsNormKernel(const T* x, T* residual, const T* weight, T* out, int dim,
                              float eps) {
  WaitForPriorGrid();
  AllowDependentsIfSmallGrid();
  __shared__ float scratch[32];
  const int64_t row = blockIdx.x;
  const T* xr = x + row * dim;
  T* rr = residual == nullptr ? nullptr : residual + row * dim;
  float ss = 0.0f;
  for (int c = threadIdx.x * 8; c < dim; c += blockDim.x * 8) {
    float f[8];
    Unpack8<T>(LoadNc16(xr + c), f);
    if (rr != nullptr) {
      float r[8];
      Unpack8<T>(*reinterpret_cast<const uint4*>(rr + c), r);
      for (int i = 0; i < 8; ++i) f[i] += r[i];
      const uint4 packed = Pack8<T>(f);
      *reinterpret_cast<uint4*>(rr + c) = packed;
      Unpack8<T>(packed, f);  // normalise the stored (rounded) sum
    }
    for (int i = 0; i < 8; ++i) ss += f[i] * f[i];
  }
  const float inv = rsqrtf(BlockSum(ss, scratch) / dim + eps);
  for (int c = threadIdx.x * 8; c < dim; c += blockDim.x * 8) {
    float f[8], w[8];
    Unpack8<T>(rr != nullptr ? *reinterpret_cast<const uint4*>(rr + c) : LoadNc16(xr + c), f);
    Unpack8<T>(LoadNc16(weight + c), w);
    for (int i = 0; i < 8; ++i) f[i] = f[i] * inv * w[i];
    *reinterpret_cast<uint4*>(out + row * dim + c) = Pack8<T>(f);
  }
}

template <typename T>
__global__ void RopeKernel(T* q, int64_t q_stride, int hq, T* k, int64_t k_stride, int hk,
                           const int32_t* pos, int head_dim, float theta, const float* inv_freq,
                           bool interleaved) {
  WaitForPriorGrid();
  AllowDependentsIfSmallGrid();
  const int64_t t = blockIdx.x;
  const float posf = static_cast<float>(pos[t]);
  const int half = head_dim / 2;
  const int total = (hq + (k != nullptr ? hk : 0)) * half;
  for (int idx = threadIdx.x; idx < total; idx += blockDim.x) {
    const int h = idx / half, i = idx % half;
    T* x = h < hq ? q + t * q_stride + static_cast<int64_t>(h) * head_dim
                  : k + t * k_stride + static_cast<int64_t>(h - hq) * head_dim;
    RopeHead<T>(x, head_dim, posf, theta, inv_freq, interleaved, i, half);
  }
}

// RopeKernel with 16-byte accesses, eight pairs a thread, and a token's heads spread over
// gridDim.y blocks: at decode batch sizes one block per token ran ~20 dependent rounds of
// scalar loads (13 us a layer on an H200 for a single token).
template <typename T>
__global__ void RopeVectorKernel(T* q, int64_t q_stride, int hq, T* k, int64_t k_stride, int hk,
                                 const int32_t* pos, int head_dim, float theta,
                                 const float* inv_freq, bool interleaved) {
  WaitForPriorGrid();
  AllowDependentsIfSmallGrid();
  __shared__ float2 cs[rope_internal::kRopeTablePairs];
  const int64_t t = blockIdx.x;
  const int units_per_head = head_dim / 16;
  const int total = (hq + (k != nullptr ? hk : 0)) * units_per_head;
  const int idx = blockIdx.y * blockDim.x + threadIdx.x;
  rope_internal::RopeTableToShared(cs, static_cast<float>(pos[t]), head_dim, theta, inv_freq);
  if (idx >= total) return;
  const int h = idx / units_per_head, i0 = (idx % units_per_head) * 8;
  T* x = h < hq ? q + t * q_stride + static_cast<int64_t>(h) * head_dim
                : k + t * k_stride + static_cast<int64_t>(h - hq) * head_dim;
  RopeEightPairs<T>(x, head_dim, cs, interleaved, i0);
}

template <typename T>
__global__ void SwiGluKernel(const T* gate, const T* up, int64_t in_stride, T* out, int dim) {
  WaitForPriorGrid();
  AllowDependentsIfSmallGrid();
  const int64_t t = blockIdx.y;
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= dim) return;
  const float g = ToFloat<T>(gate[t * in_stride + i]);
  const float u = ToFloat<T>(up[t * in_stride + i]);
  out[t * dim + i] = FromFloat<T>(SiluTimes(g, u));
}

// SwiGluKernel eight elements a thread with 16-byte accesses (a 32k-token prefill's SwiGLU ran
// at 1.7 TB/s with scalar ones). REQUIRES dim, in_stride % 8 == 0 and 16-byte aligned rows.
template <typename T>
__global__ void SwiGluVectorKernel(const T* gate, const T* up, int64_t in_stride, T* out, int dim) {
  WaitForPriorGrid();
  AllowDependentsIfSmallGrid();
  const int64_t t = blockIdx.y;
  const int i = (blockIdx.x * blockDim.x + threadIdx.x) * 8;
  if (i >= dim) return;
  float g[8], u[8];
  Unpack8<T>(LoadNc16(gate + t * in_stride + i), g);
  Unpack8<T>(LoadNc16(up + t * in_stride + i), u);
#pragma unroll
  for (int j = 0; j < 8; ++j) g[j] = SiluTimes(g[j], u[j]);
  *reinterpret_cast<uint4*>(out + t * dim + i) = Pack8<T>(g);
}

template <typename T>
__global__ void EmbeddingKernel(const T* table, int vocab, int dim, const int32_t* ids, T* out) {
  WaitForPriorGrid();
  AllowDependentsIfSmallGrid();
  const int64_t t = blockIdx.x;
  const int id = ids[t];
  for (int c = threadIdx.x * 8; c < dim; c += blockDim.x * 8) {
    const uint4 v = (id >= 0 && id < vocab) ? LoadNc16(table + static_cast<int64_t>(id) * dim + c)
                                            : make_uint4(0, 0, 0, 0);
    *reinterpret_cast<uint4*>(out + t * dim + c) = v;
  }
}

int RowThreads(int dim) { return std::clamp((dim / 8 + 31) / 32 * 32, 32, 1024); }

}  // namespace

cudaError_t RmsNorm(DType dtype, const void* x, void* residual, const void* weight, void* out,
                    int32_t rows, int32_t dim, float eps, cudaStream_t stream) {
  if (rows < 0 || dim <= 0 || dim % 8 != 0) return cudaErrorInvalidValue;
  if (rows == 0) return cudaSuccess;
  return DispatchDType(dtype, [&](auto t) {
    using T = decltype(t);
    return LaunchOverlapped(RmsNormKernel<T>, dim3(rows), dim3(RowThreads(dim)), 0, stream,
                            static_cast<const T*>(x), static_cast<T*>(residual),
                            static_cast<const T*>(weight), static_cast<T*>(out), dim, eps);
  });
}

cudaError_t Rope(DType dtype, void* q, int64_t q_stride, int32_t num_q_heads, void* k,
                 int64_t k_stride, int32_t num_kv_heads, const int32_t* pos, int32_t tokens,
                 int32_t head_dim, float theta, const float* inv_freq, RopeStyle style,
                 cudaStream_t stream) {
  if (tokens < 0 || head_dim <= 0 || head_dim % 2 != 0 || num_q_heads < 0) {
    return cudaErrorInvalidValue;
  }
  if (tokens == 0) return cudaSuccess;
  const bool vector = RopeVectorizable(q, q_stride, head_dim) &&
                      (k == nullptr || RopeVectorizable(k, k_stride, head_dim));
  return DispatchDType(dtype, [&](auto t) {
    using T = decltype(t);
    if (vector) {
      const int units = (num_q_heads + (k != nullptr ? num_kv_heads : 0)) * (head_dim / 16);
      const dim3 grid(tokens, (units + 127) / 128);
      return LaunchOverlapped(RopeVectorKernel<T>, grid, dim3(128), 0, stream, static_cast<T*>(q),
                              q_stride, num_q_heads, static_cast<T*>(k), k_stride, num_kv_heads,
                              pos, head_dim, theta, inv_freq, style == RopeStyle::kInterleaved);
    }
    return LaunchOverlapped(RopeKernel<T>, dim3(tokens), dim3(128), 0, stream, static_cast<T*>(q),
                            q_stride, num_q_heads, static_cast<T*>(k), k_stride, num_kv_heads, pos,
                            head_dim, theta, inv_freq, style == RopeStyle::kInterleaved);
  });
}

cudaError_t SwiGlu(DType dtype, const void* gate, const void* up, int64_t in_stride, void* out,
                   int32_t tokens, int32_t dim, cudaStream_t stream) {
  if (tokens < 0 || dim <= 0) return cudaErrorInvalidValue;
  if (tokens == 0) return cudaSuccess;
  const bool vector =
      dim % 8 == 0 && in_stride % 8 == 0 && reinterpret_cast<uintptr_t>(gate) % 16 == 0 &&
      reinterpret_cast<uintptr_t>(up) % 16 == 0 && reinterpret_cast<uintptr_t>(out) % 16 == 0;
  return DispatchDType(dtype, [&](auto t) {
    using T = decltype(t);
    if (vector) {
      const dim3 grid((dim / 8 + 255) / 256, tokens);
      return LaunchOverlapped(SwiGluVectorKernel<T>, grid, dim3(256), 0, stream,
                              static_cast<const T*>(gate), static_cast<const T*>(up), in_stride,
                              static_cast<T*>(out), dim);
    }
    const dim3 grid((dim + 255) / 256, tokens);
    return LaunchOverlapped(SwiGluKernel<T>, grid, dim3(256), 0, stream,
                            static_cast<const T*>(gate), static_cast<const T*>(up), in_stride,
                            static_cast<T*>(out), dim);
  });
}

cudaError_t EmbeddingLookup(DType dtype, const void* table, int32_t vocab, int32_t dim,
                            const int32_t* ids, int32_t tokens, void* out, cudaStream_t stream) {
  if (tokens < 0 || dim <= 0 || dim % 8 != 0 || vocab < 0) return cudaErrorInvalidValue;
  if (tokens == 0) return cudaSuccess;
  return DispatchDType(dtype, [&](auto t) {
    using T = decltype(t);
    return LaunchOverlapped(EmbeddingKernel<T>, dim3(tokens), dim3(RowThreads(dim)), 0, stream,
                            static_cast<const T*>(table), vocab, dim, ids, static_cast<T*>(out));
  });
}

}  // namespace hkv::kernels
