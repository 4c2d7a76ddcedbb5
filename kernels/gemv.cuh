#pragma once
// Device code shared by the skinny matrix products (gemv.cu, gemv_fused.cu): the warp-per-row
// dot product over 16-byte weight loads. Include from .cu files only.
//
// Thread-safe: stateless device functions.

#include "kernels/cuda_common.cuh"

namespace hkv::kernels::gemv_internal {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kUnroll = 8;  // 16-byte weight loads in flight per lane

// A 16-byte load of the input rows: read-only global (__ldg) or shared memory (the fused
// kernels' normalised rows).
template <bool kASmem, typename T>
__device__ __forceinline__ uint4 LoadA(const T* p) {
  if constexpr (kASmem) {
    return *reinterpret_cast<const uint4*>(p);
  } else {
    return __ldg(reinterpret_cast<const uint4*>(p));
  }
}

// acc[r][m] += dot(w row r, a row m) for the R weight rows rows[r], over k elements. Each lane
// keeps kUnroll 16-byte weight loads in flight, split over the R rows.
template <typename T, int M, int R, bool kASmem = false>
__device__ __forceinline__ void DotRows(const T* __restrict__ a, int64_t lda, const T* const* rows,
                                        int k, int lane, float (&acc)[R][M]) {
  constexpr int kStep = 32 * 8;  // elements per warp per load
  constexpr int kPer = kUnroll / R;
  int base = lane * 8;
  for (; base + (kPer - 1) * kStep < k; base += kPer * kStep) {
    uint4 wv[R][kPer];
#pragma unroll
    for (int r = 0; r < R; ++r) {
#pragma unroll
      for (int u = 0; u < kPer; ++u) {
        wv[r][u] = __ldcs(reinterpret_cast<const uint4*>(rows[r] + base + u * kStep));
      }
    }
#pragma unroll
    for (int u = 0; u < kPer; ++u) {
#pragma unroll
      for (int m = 0; m < M; ++m) {
        float af[8];
        Unpack8<T>(LoadA<kASmem>(a + m * lda + base + u * kStep), af);
#pragma unroll
        for (int r = 0; r < R; ++r) {
          float wf[8];
          Unpack8<T>(wv[r][u], wf);
#pragma unroll
          for (int i = 0; i < 8; ++i) acc[r][m] = fmaf(wf[i], af[i], acc[r][m]);
        }
      }
    }
  }
  for (; base < k; base += kStep) {
#pragma unroll
    for (int m = 0; m < M; ++m) {
      float af[8];
      Unpack8<T>(LoadA<kASmem>(a + m * lda + base), af);
#pragma unroll
      for (int r = 0; r < R; ++r) {
        float wf[8];
        Unpack8<T>(__ldcs(reinterpret_cast<const uint4*>(rows[r] + base)), wf);
#pragma unroll
        for (int i = 0; i < 8; ++i) acc[r][m] = fmaf(wf[i], af[i], acc[r][m]);
      }
    }
  }
#pragma unroll
  for (int r = 0; r < R; ++r) {
#pragma unroll
    for (int m = 0; m < M; ++m) {
#pragma unroll
      for (int off = 16; off > 0; off /= 2) {
        acc[r][m] += __shfl_xor_sync(0xffffffffu, acc[r][m], off);
      }
    }
  }
}

}  // namespace hkv::kernels::gemv_internal
