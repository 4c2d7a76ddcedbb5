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

// A 16-byte load of the input rows: read-only global (__ldg), coherent global (kCoherent: the
// rows the previous kernel wrote, read after a wait that the kernel did not start with: a
// non-coherent load asserts the data is constant for the kernel's life, so it could be
// scheduled above that wait), or shared memory (the fused kernels' normalised rows; kCoherent:
// written after the first weight loads, so the load must not move above that).
template <bool kASmem, typename T, bool kCoherent = false>
__device__ __forceinline__ uint4 LoadA(const T* p) {
  if constexpr (kASmem && kCoherent) {
    // Rows written in shared memory after the kernel's first loads (DotRows's
    // after_first_loads): a volatile load stays below that step's barrier.
    uint4 v;
    const uint32_t s = static_cast<uint32_t>(__cvta_generic_to_shared(p));
    asm volatile("ld.shared.v4.u32 {%0, %1, %2, %3}, [%4];"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "r"(s)
                 : "memory");
    return v;
  } else if constexpr (kASmem) {
    return *reinterpret_cast<const uint4*>(p);
  } else if constexpr (kCoherent) {
    return LoadCoherent16(p);
  } else {
    return __ldg(reinterpret_cast<const uint4*>(p));
  }
}

// DotRows's default step between its first weight loads and its first read of `a`.
struct WaitForPriorGridHook {
  __device__ __forceinline__ void operator()() const { WaitForPriorGrid(); }
};

// acc[r][m] += dot(w row r, a row m) for the R weight rows rows[r], over k elements. Each lane
// keeps kUnroll 16-byte weight loads in flight, split over the R rows.
//
// kWaitInside: the caller has not called WaitForPriorGrid(); DotRows issues its first batch of
// weight loads, then waits (unconditionally, outside any branch: a wait the compiler may see
// as skippable let the `a` loads move above it and read the previous kernel's output too
// early), then reads `a`. So a kernel launched with LaunchOverlapped streams its first weights
// while the previous kernel (a norm, the attention) still runs. REQUIRES then that no kernel
// still running on the stream writes the weight rows (model weights, constant during a step);
// `a` may be the previous kernel's output. `after_first_loads` replaces the bare wait: it must
// call WaitForPriorGrid() unconditionally and may then write `a` (the fused kernels normalise
// their input rows into shared memory there, every thread of the CTA taking part).
template <typename T, int M, int R, bool kASmem = false, bool kWaitInside = false,
          typename AfterFirstLoads = WaitForPriorGridHook>
__device__ __forceinline__ void DotRows(const T* __restrict__ a, int64_t lda, const T* const* rows,
                                        int k, int lane, float (&acc)[R][M],
                                        AfterFirstLoads after_first_loads = {}) {
  constexpr int kStep = 32 * 8;  // elements per warp per load
  constexpr int kPer = kUnroll / R;
  int base = lane * 8;
  uint4 wv[R][kPer];
  auto load_batch = [&](int at) {
#pragma unroll
    for (int r = 0; r < R; ++r) {
#pragma unroll
      for (int u = 0; u < kPer; ++u) {
        wv[r][u] = __ldcs(reinterpret_cast<const uint4*>(rows[r] + at + u * kStep));
      }
    }
  };
  auto full_batch = [&](int at) { return at + (kPer - 1) * kStep < k; };
  if (full_batch(base)) load_batch(base);
  if constexpr (kWaitInside) after_first_loads();
  // Invariant: wv holds the batch at `base` whenever full_batch(base).
  for (; full_batch(base); base += kPer * kStep) {
#pragma unroll
    for (int u = 0; u < kPer; ++u) {
#pragma unroll
      for (int m = 0; m < M; ++m) {
        float af[8];
        Unpack8<T>(LoadA<kASmem, T, kWaitInside>(a + m * lda + base + u * kStep), af);
#pragma unroll
        for (int r = 0; r < R; ++r) {
          float wf[8];
          Unpack8<T>(wv[r][u], wf);
#pragma unroll
          for (int i = 0; i < 8; ++i) acc[r][m] = fmaf(wf[i], af[i], acc[r][m]);
        }
      }
    }
    if (full_batch(base + kPer * kStep)) load_batch(base + kPer * kStep);
  }
  for (; base < k; base += kStep) {
#pragma unroll
    for (int m = 0; m < M; ++m) {
      float af[8];
      Unpack8<T>(LoadA<kASmem, T, kWaitInside>(a + m * lda + base), af);
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
