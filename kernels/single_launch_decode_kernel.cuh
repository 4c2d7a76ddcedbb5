#pragma once
// The paged decode attention kernel (see single_launch_decode_attention.h), templated on the
// variant: kWarps warps per CTA, kUnroll 16-byte K and V loads per lane per iteration, and
// kPrefetch (the next iteration's loads issued before this one's math). Included by the
// single_launch_decode_w*.cu files, one variant each, so the instantiations compile in parallel.
//
// NOTE(kernels): the kHeadDim/8 lanes of a "subgroup" hold one token, so a warp load covers
// 2 (d=128) or 4 (d=64) consecutive tokens, and kUnroll loads of K and V are in flight before
// any math. Each lane keeps the online-softmax state (m, l, acc[8]) of every query head of the
// group for its 8 dims, so K/V bytes are read exactly once per group.
//
// A CTA runs the items cta_begin[c] .. cta_begin[c+1]-1 of the work list one after another.
// An item of a split row writes its partial (output, log2-sum-exp), then counts itself in the
// row's arrival counter; the item that arrives last merges all partials of the row into the
// output and sets the counter back to zero (threadfence-reduction pattern), so no second
// kernel and no host reset are needed.

#include <cuda_runtime.h>

#include "kernels/cuda_common.cuh"
#include "kernels/single_launch_decode_plan.h"

namespace hkv::kernels::single_launch_decode {

struct SingleLaunchDecodeArgs {
  const int32_t* meta;
  int32_t* arrivals;  // meta + row_arrivals (the work list is device memory the caller owns)
  MetaLayout layout{SingleLaunchDecodeOptions{}};
  float* partial_o;    // [max_work, group, head_dim]
  float* partial_lse;  // [max_work, group] (log2 domain)
  const int32_t* indices;
  const void* k_pool;
  const void* v_pool;
  int64_t block_stride;
  int32_t block_shift;
  int32_t num_kv_heads;
  int32_t group;
  const void* q;
  int64_t q_seq_stride;
  void* out;
  int64_t out_seq_stride;
  float scale_log2;
};

template <typename T, int kHeadDim, int kGroup, int kWarps, int kUnroll, bool kPrefetch>
__global__ void __launch_bounds__(kWarps * 32) SingleLaunchDecodeKernel(SingleLaunchDecodeArgs a) {
  WaitForPriorGrid();
  AllowDependentsIfSmallGrid();
  constexpr int kThreads = kWarps * 32;
  constexpr int kLanes = kHeadDim / 8;  // lanes per token
  constexpr int kSubs = 32 / kLanes;    // tokens per warp load
  constexpr int kTokPerWarp = kSubs * kUnroll;
  constexpr int kTokPerIter = kTokPerWarp * kWarps;
  __shared__ float s_m[kWarps][kGroup], s_l[kWarps][kGroup];
  __shared__ float s_acc[kWarps][kGroup][kHeadDim];
  __shared__ int s_last;

  const MetaLayout& L = a.layout;
  const int c = blockIdx.x;  // < max_work_items, so cta_begin[c + 1] is inside the list
  const int num_ctas = a.meta[1];
  const int item_begin = a.meta[L.cta_begin + c], item_end = a.meta[L.cta_begin + c + 1];
  if (c >= num_ctas) return;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int sub = lane / kLanes, li = lane % kLanes;
  const T* kp = static_cast<const T*>(a.k_pool);
  const T* vp = static_cast<const T*>(a.v_pool);
  const int mask = (1 << a.block_shift) - 1;

  for (int w = item_begin; w < item_end; ++w) {
    const int row = a.meta[L.work_row + w];
    const int tb = a.meta[L.work_begin + w], te = a.meta[L.work_end + w];
    const int first_block = a.meta[L.work_first_block + w];
    const int nsplit = a.meta[L.row_num_splits + row];
    const int slot = a.meta[L.work_slot + w];
    const int seq = row / a.num_kv_heads, kvh = row % a.num_kv_heads;

    float q[kGroup][8];
#pragma unroll
    for (int g = 0; g < kGroup; ++g) {
      if (g < a.group) {
        const T* qp = static_cast<const T*>(a.q) + seq * a.q_seq_stride +
                      static_cast<int64_t>(kvh * a.group + g) * kHeadDim + li * 8;
        Unpack8<T>(LoadNc16(qp), q[g]);
#pragma unroll
        for (int i = 0; i < 8; ++i) q[g][i] *= a.scale_log2;
      } else {
#pragma unroll
        for (int i = 0; i < 8; ++i) q[g][i] = 0.0f;
      }
    }
    float m[kGroup], l[kGroup], acc[kGroup][8];
#pragma unroll
    for (int g = 0; g < kGroup; ++g) {
      m[g] = -1e30f;
      l[g] = 0.0f;
#pragma unroll
      for (int i = 0; i < 8; ++i) acc[g][i] = 0.0f;
    }
    const int32_t* blocks = a.indices + first_block;

    // Block ids are fetched one iteration ahead so their latency overlaps the K/V loads. With
    // kPrefetch the K/V loads of the next iteration are issued before this iteration's math
    // (registers double-buffered), so a warp always has kUnroll loads of K and V in flight.
    int blk[kUnroll];
    auto load_blocks = [&](int base_tok) {
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int t = base_tok + u * kSubs + sub;
        blk[u] = t < te ? blocks[t >> a.block_shift] : 0;
      }
    };
    auto load_kv = [&](int base_tok, uint4* kr, uint4* vr) {
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int t = base_tok + u * kSubs + sub;
        if (t < te) {
          const int64_t off =
              static_cast<int64_t>(blk[u]) * a.block_stride + (t & mask) * kHeadDim + li * 8;
          kr[u] = LoadNc16(kp + off);
          vr[u] = LoadNc16(vp + off);
        } else {
          kr[u] = make_uint4(0, 0, 0, 0);
          vr[u] = make_uint4(0, 0, 0, 0);
        }
      }
    };
    const int first_tok = tb + warp * kTokPerWarp;
    load_blocks(first_tok);
    uint4 kn[kUnroll], vn[kUnroll];  // kPrefetch: the next iteration's K/V
    if constexpr (kPrefetch) {
      load_kv(first_tok, kn, vn);
      load_blocks(first_tok + kTokPerIter);
    }
    for (int base = first_tok; base < te; base += kTokPerIter) {
      uint4 kr[kUnroll], vr[kUnroll];
      if constexpr (kPrefetch) {
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
          kr[u] = kn[u];
          vr[u] = vn[u];
        }
        load_kv(base + kTokPerIter, kn, vn);
        load_blocks(base + 2 * kTokPerIter);
      } else {
        load_kv(base, kr, vr);
        load_blocks(base + kTokPerIter);
      }
      float s[kUnroll][kGroup];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        float kf[8];
        Unpack8<T>(kr[u], kf);
#pragma unroll
        for (int g = 0; g < kGroup; ++g) {
          float d = 0.0f;
#pragma unroll
          for (int i = 0; i < 8; ++i) d = fmaf(q[g][i], kf[i], d);
          s[u][g] = d;
        }
      }
#pragma unroll
      for (int o = kLanes / 2; o > 0; o >>= 1) {
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
#pragma unroll
          for (int g = 0; g < kGroup; ++g) s[u][g] += __shfl_xor_sync(0xffffffffu, s[u][g], o);
        }
      }
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        if (base + u * kSubs + sub >= te) {
#pragma unroll
          for (int g = 0; g < kGroup; ++g) s[u][g] = -INFINITY;
        }
      }
#pragma unroll
      for (int g = 0; g < kGroup; ++g) {
        float mx = m[g];
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) mx = fmaxf(mx, s[u][g]);
        const float corr = exp2f(m[g] - mx);
        m[g] = mx;
        l[g] *= corr;
#pragma unroll
        for (int i = 0; i < 8; ++i) acc[g][i] *= corr;
      }
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        float vf[8];
        Unpack8<T>(vr[u], vf);
#pragma unroll
        for (int g = 0; g < kGroup; ++g) {
          const float p = exp2f(s[u][g] - m[g]);
          l[g] += p;
#pragma unroll
          for (int i = 0; i < 8; ++i) acc[g][i] = fmaf(p, vf[i], acc[g][i]);
        }
      }
    }

    // Merge the subgroups of the warp (lanes holding the same dims).
#pragma unroll
    for (int o = kLanes; o < 32; o <<= 1) {
#pragma unroll
      for (int g = 0; g < kGroup; ++g) {
        const float mo = __shfl_xor_sync(0xffffffffu, m[g], o);
        const float lo = __shfl_xor_sync(0xffffffffu, l[g], o);
        const float mn = fmaxf(m[g], mo);
        const float c1 = exp2f(m[g] - mn), c2 = exp2f(mo - mn);
        l[g] = l[g] * c1 + lo * c2;
#pragma unroll
        for (int i = 0; i < 8; ++i) {
          const float ao = __shfl_xor_sync(0xffffffffu, acc[g][i], o);
          acc[g][i] = acc[g][i] * c1 + ao * c2;
        }
        m[g] = mn;
      }
    }
    if (sub == 0) {
#pragma unroll
      for (int g = 0; g < kGroup; ++g) {
#pragma unroll
        for (int i = 0; i < 8; ++i) s_acc[warp][g][li * 8 + i] = acc[g][i];
        if (li == 0) {
          s_m[warp][g] = m[g];
          s_l[warp][g] = l[g];
        }
      }
    }
    __syncthreads();
    for (int idx = threadIdx.x; idx < a.group * kHeadDim; idx += kThreads) {
      const int g = idx / kHeadDim, d = idx % kHeadDim;
      float mx = -1e30f;
#pragma unroll
      for (int x = 0; x < kWarps; ++x) mx = fmaxf(mx, s_m[x][g]);
      float sum = 0.0f, o = 0.0f;
#pragma unroll
      for (int x = 0; x < kWarps; ++x) {
        const float cw = exp2f(s_m[x][g] - mx);
        sum += s_l[x][g] * cw;
        o += s_acc[x][g][d] * cw;
      }
      const float val = sum > 0.0f ? o / sum : 0.0f;
      if (nsplit <= 1) {
        T* op = static_cast<T*>(a.out) + seq * a.out_seq_stride +
                static_cast<int64_t>(kvh * a.group + g) * kHeadDim + d;
        *op = FromFloat<T>(val);
      } else {
        a.partial_o[(static_cast<int64_t>(slot) * a.group + g) * kHeadDim + d] = val;
        if (d == 0) a.partial_lse[slot * a.group + g] = sum > 0.0f ? mx + log2f(sum) : -INFINITY;
      }
    }
    if (nsplit > 1) {
      // Publish this item's partial, then count it; the last of the row merges.
      __threadfence();
      __syncthreads();
      if (threadIdx.x == 0) {
        const int prev = atomicAdd(a.arrivals + row, 1);
        s_last = prev == nsplit - 1;
        if (s_last) {
          a.arrivals[row] = 0;  // every item of the row has arrived: ready for the next call
          __threadfence();      // and the partials of the others are read after their count
        }
      }
      __syncthreads();
      if (s_last) {
        const int begin = a.meta[L.row_split_begin + row];
        for (int idx = threadIdx.x; idx < a.group * kHeadDim; idx += kThreads) {
          const int g = idx / kHeadDim, d = idx % kHeadDim;
          float mr = -INFINITY, sum = 0.0f, o = 0.0f;
          for (int i = 0; i < nsplit; ++i) {
            const int sl = begin + i;
            // L2 loads: the partials were written by other CTAs in this kernel.
            const float lse = __ldcg(a.partial_lse + sl * a.group + g);
            const float x =
                __ldcg(a.partial_o + (static_cast<int64_t>(sl) * a.group + g) * kHeadDim + d);
            if (lse == -INFINITY) continue;
            const float mn = fmaxf(mr, lse);
            const float c_old = exp2f(mr - mn), c_new = exp2f(lse - mn);
            sum = sum * c_old + c_new;
            o = o * c_old + c_new * x;
            mr = mn;
          }
          T* op = static_cast<T*>(a.out) + seq * a.out_seq_stride +
                  static_cast<int64_t>(kvh * a.group + g) * kHeadDim + d;
          *op = FromFloat<T>(sum > 0.0f ? o / sum : 0.0f);
        }
      }
    }
    __syncthreads();  // the shared partial state is rewritten by the next item
  }
}

// Launches one variant for `group` (bucketed to 1, 2, 4 or 8 query heads per kv head).
template <int kWarps, int kUnroll, bool kPrefetch>
cudaError_t LaunchSingleLaunchDecodeVariant(DType dtype, int head_dim, int group, int grid,
                                            SingleLaunchDecodeArgs a, cudaStream_t stream) {
  return DispatchDType(dtype, [&](auto t) {
    using T = decltype(t);
    return DispatchHeadDim(head_dim, [&](auto hd) {
      constexpr int D = decltype(hd)::value;
      auto launch = [&](auto kernel) {
        return LaunchOverlapped(kernel, dim3(grid), dim3(kWarps * 32), 0, stream, a);
      };
      if (group <= 1) return launch(SingleLaunchDecodeKernel<T, D, 1, kWarps, kUnroll, kPrefetch>);
      if (group <= 2) return launch(SingleLaunchDecodeKernel<T, D, 2, kWarps, kUnroll, kPrefetch>);
      if (group <= 4) return launch(SingleLaunchDecodeKernel<T, D, 4, kWarps, kUnroll, kPrefetch>);
      return launch(SingleLaunchDecodeKernel<T, D, 8, kWarps, kUnroll, kPrefetch>);
    });
  });
}

// One declaration per variant file (single_launch_decode_w<warps>u<unroll>[p].cu).
cudaError_t LaunchSingleLaunchDecodeW4U4(DType dtype, int head_dim, int group, int grid,
                                         SingleLaunchDecodeArgs a, cudaStream_t stream);
cudaError_t LaunchSingleLaunchDecodeW4U8(DType dtype, int head_dim, int group, int grid,
                                         SingleLaunchDecodeArgs a, cudaStream_t stream);
cudaError_t LaunchSingleLaunchDecodeW8U4(DType dtype, int head_dim, int group, int grid,
                                         SingleLaunchDecodeArgs a, cudaStream_t stream);
cudaError_t LaunchSingleLaunchDecodeW8U8(DType dtype, int head_dim, int group, int grid,
                                         SingleLaunchDecodeArgs a, cudaStream_t stream);
cudaError_t LaunchSingleLaunchDecodeW4U4P(DType dtype, int head_dim, int group, int grid,
                                          SingleLaunchDecodeArgs a, cudaStream_t stream);
cudaError_t LaunchSingleLaunchDecodeW8U4P(DType dtype, int head_dim, int group, int grid,
                                          SingleLaunchDecodeArgs a, cudaStream_t stream);

}  // namespace hkv::kernels::single_launch_decode
