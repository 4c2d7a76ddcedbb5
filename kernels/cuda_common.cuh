#pragma once
// Device helpers shared by the kernels: 16-byte vector conversions for bf16/fp16, warp and
// block reductions, and the runtime-to-compile-time dispatch of dtype and head_dim.
//
// Thread-safe: stateless device/host inline functions.

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdlib>
#include <type_traits>
#include <utility>

#include "kernels/dtype.h"

namespace hkv::kernels {

// Programmatic dependent launch (Hopper): a kernel launched with LaunchOverlapped may be
// scheduled while the previous kernel on the stream finishes, so its launch latency hides
// behind that kernel's tail; in a decode step of ~350 small kernels this is most of the gap
// between them. Every kernel launched this way calls WaitForPriorGrid() (it returns once the
// previous grid has completed and its writes are visible) before it writes memory or reads
// what the previous kernel may write, and AllowDependents() only after that wait. So when a
// kernel starts, the one before it has passed its wait and every grid before that one has
// completed: reads before the wait are allowed of memory that only copies or kernels at least
// two launches back write (model weights; a step's uploaded work lists and gathered page
// indices, decode_attention.cu). AllowDependents() comes once its remaining work no longer
// needs free SM slots (single-wave kernels: right after the wait; multi-wave ones: after their
// main loop). Launched without the attribute (HKV_PDL=0, or older GPUs through the sm_80 PTX) both
// are no-ops.
__device__ __forceinline__ void WaitForPriorGrid() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
__device__ __forceinline__ void AllowDependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// AllowDependents() for grids small enough to run in one wave (decode-sized launches); a large
// grid (prefill) lets its dependents start only as its blocks exit, so they never take SM
// slots its remaining blocks need.
__device__ __forceinline__ void AllowDependentsIfSmallGrid() {
  if (gridDim.x * gridDim.y * gridDim.z <= 256) AllowDependents();
}

inline bool OverlappedLaunchEnabled() {
  static const bool on = [] {
    const char* v = std::getenv("HKV_PDL");
    return v == nullptr || v[0] != '0';
  }();
  return on;
}

template <typename... KernelArgs, typename... Args>
cudaError_t LaunchOverlapped(void (*kernel)(KernelArgs...), dim3 grid, dim3 block, size_t smem,
                             cudaStream_t stream, Args&&... args) {
  cudaLaunchConfig_t config = {};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = smem;
  config.stream = stream;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  config.attrs = attr;
  config.numAttrs = OverlappedLaunchEnabled() ? 1 : 0;
  return cudaLaunchKernelEx(&config, kernel, std::forward<Args>(args)...);
}

template <typename T>
__device__ __forceinline__ float ToFloat(T x);
template <>
__device__ __forceinline__ float ToFloat<__nv_bfloat16>(__nv_bfloat16 x) {
  return __bfloat162float(x);
}
template <>
__device__ __forceinline__ float ToFloat<__half>(__half x) {
  return __half2float(x);
}

template <typename T>
__device__ __forceinline__ T FromFloat(float x);
template <>
__device__ __forceinline__ __nv_bfloat16 FromFloat<__nv_bfloat16>(float x) {
  return __float2bfloat16(x);
}
template <>
__device__ __forceinline__ __half FromFloat<__half>(float x) {
  return __float2half(x);
}

// Unpacks 8 elements held in a uint4 into floats.
template <typename T>
__device__ __forceinline__ void Unpack8(const uint4& v, float* f) {
  const uint32_t w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    if constexpr (std::is_same_v<T, __nv_bfloat16>) {
      f[2 * i] = __uint_as_float(w[i] << 16);
      f[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
    } else {
      const __half2 h = *reinterpret_cast<const __half2*>(&w[i]);
      const float2 p = __half22float2(h);
      f[2 * i] = p.x;
      f[2 * i + 1] = p.y;
    }
  }
}

// Packs 8 floats into a uint4 of T (round to nearest even).
template <typename T>
__device__ __forceinline__ uint4 Pack8(const float* f) {
  uint32_t w[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    T lo = FromFloat<T>(f[2 * i]);
    T hi = FromFloat<T>(f[2 * i + 1]);
    w[i] = static_cast<uint32_t>(*reinterpret_cast<uint16_t*>(&lo)) |
           (static_cast<uint32_t>(*reinterpret_cast<uint16_t*>(&hi)) << 16);
  }
  return make_uint4(w[0], w[1], w[2], w[3]);
}

// 2^x on the SFU, one instruction (exp2f adds a denormal range fix-up around it). For softmax
// weights: inputs <= 0 or -inf (-> +0); denormal results flush to zero, which is harmless there.
__device__ __forceinline__ float FastExp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

// 16-byte asynchronous global -> shared copy through L2 (cp.async.cg, sm_80+): zero-fills the
// 16 bytes and reads nothing when !valid. Complete after CpAsyncCommit() and a CpAsyncWait<N>()
// that leaves at most N newer groups pending; then visible to the issuing thread (other
// threads need a barrier as well).
__device__ __forceinline__ void CpAsync16(void* smem, const void* gmem, bool valid) {
  const uint32_t a = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(a), "l"(gmem),
               "r"(valid ? 16 : 0)
               : "memory");
}
__device__ __forceinline__ void CpAsyncCommit() {
  asm volatile("cp.async.commit_group;\n" ::: "memory");
}
template <int N>
__device__ __forceinline__ void CpAsyncWait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

// Read-only, L1-bypassing-friendly 16-byte global load.
__device__ __forceinline__ uint4 LoadNc16(const void* p) {
  return __ldg(reinterpret_cast<const uint4*>(p));
}

// A coherent 16-byte global load, for data the previous kernel wrote, read after a
// WaitForPriorGrid() that is not the kernel's first statement: a non-coherent load (LoadNc16)
// asserts the data is constant for the kernel's life, so the compiler may schedule it above
// that wait (measured: a GEMV that waited after its first weight loads read its input early).
__device__ __forceinline__ uint4 LoadCoherent16(const void* p) {
  uint4 v;
  asm volatile("ld.global.v4.u32 {%0, %1, %2, %3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p));
  return v;
}

__device__ __forceinline__ float WarpSum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ __forceinline__ float WarpMax(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Sum over the block; every thread gets the result. `scratch` holds >= 32 floats.
__device__ __forceinline__ float BlockSum(float v, float* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  v = WarpSum(v);
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  const int nw = (blockDim.x + 31) >> 5;
  float r = lane < nw ? scratch[lane] : 0.0f;
  return WarpSum(r);
}

// Max over the block; every thread gets the result. `scratch` holds >= 32 floats.
__device__ __forceinline__ float BlockMax(float v, float* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  v = WarpMax(v);
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  const int nw = (blockDim.x + 31) >> 5;
  float r = lane < nw ? scratch[lane] : -INFINITY;
  return WarpMax(r);
}

// Calls fn(T{}) with T = __nv_bfloat16 or __half for `dtype`.
template <typename Fn>
cudaError_t DispatchDType(DType dtype, Fn&& fn) {
  switch (dtype) {
    case DType::kBf16:
      return fn(__nv_bfloat16{});
    case DType::kFp16:
      return fn(__half{});
  }
  return cudaErrorInvalidValue;
}

// Calls fn(std::integral_constant<int, D>{}) for head_dim D in {64, 128}.
template <typename Fn>
cudaError_t DispatchHeadDim(int head_dim, Fn&& fn) {
  switch (head_dim) {
    case 64:
      return fn(std::integral_constant<int, 64>{});
    case 128:
      return fn(std::integral_constant<int, 128>{});
  }
  return cudaErrorInvalidValue;
}

}  // namespace hkv::kernels
