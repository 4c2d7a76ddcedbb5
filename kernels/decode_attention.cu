// Paged per-head decode attention with GQA and split-K; see decode_attention.h.
//
// NOTE(kernels): one CTA = 4 warps over one work item. A warp reads 16-byte K/V vectors; the
// kHeadDim/8 lanes of a "subgroup" hold one token, so a warp load covers 2 (d=128) or 4 (d=64)
// consecutive tokens, and kUnroll loads of K and V are in flight before any math: in registers,
// or (DecodePlanOptions::kv_stages > 0) kv_stages - 1 iterations ahead in a per-lane cp.async
// ring in shared memory, which keeps more bytes in flight per SM at the same occupancy. Each lane
// keeps the online-softmax state (m, l, acc[8]) of every query head of the group for its 8
// dims, so K/V bytes are read exactly once per group.

#include <cmath>
#include <type_traits>

#include "kernels/cuda_common.cuh"
#include "kernels/decode_attention.h"
#include "kernels/decode_attention_layout.h"

namespace hkv::kernels {
namespace {

using decode_internal::kCtasPerSm;
using decode_internal::MetaLayout;

constexpr int kThreads = 128;
constexpr int kWarps = kThreads / 32;
#ifndef HKV_DECODE_UNROLL
#define HKV_DECODE_UNROLL 4  // 16-byte K and V loads in flight per lane per iteration
#endif
constexpr int kUnroll = HKV_DECODE_UNROLL;
constexpr size_t kDefaultDynamicSmem = 48 * 1024;
// How far (log2 units) a score may pass the running max before the kernel rescales.
constexpr float kRescaleSlack = 8.0f;

struct DecodeArgs {
  const int32_t* meta;
  MetaLayout layout{DecodePlanOptions{}};
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
  int32_t stages;  // kStaged kernels: iterations in the cp.async ring (2..4)
};

// Dynamic shared memory of the staged kernel: its ring of K/V vectors.
size_t RingBytes(int stages) {
  return static_cast<size_t>(stages) * kUnroll * 2 * kThreads * sizeof(uint4);
}

// Sums each of the kN values of v over the lanes of an aligned group of 2 * kOffset lanes
// (xor offsets kOffset, kOffset / 2, ..., 1), halving the values a lane holds at every level:
// at offset o the lanes with bit o set keep the upper half and their partners the lower one,
// so each shuffle carries a value the partner still needs. Afterwards, with L = 2 * kOffset
// lanes: if kN >= L, lane li (li % L) holds the sums of values j + (kN / L) * (li % L) in
// v[j], j < kN / L; else v[0] holds the sum of value (li % L) / (L / kN).
template <int kOffset, int kN>
__device__ __forceinline__ void TransposeReduce(float* v, int li) {
  if constexpr (kOffset > 0) {
    if constexpr (kN >= 2) {
      constexpr int kHalf = kN / 2;
      const bool upper = (li & kOffset) != 0;
#pragma unroll
      for (int i = 0; i < kHalf; ++i) {
        const float send = upper ? v[i] : v[i + kHalf];
        const float keep = upper ? v[i + kHalf] : v[i];
        v[i] = keep + __shfl_xor_sync(0xffffffffu, send, kOffset);
      }
      TransposeReduce<kOffset / 2, kHalf>(v, li);
    } else {
      v[0] += __shfl_xor_sync(0xffffffffu, v[0], kOffset);
      TransposeReduce<kOffset / 2, 1>(v, li);
    }
  }
}

template <typename T, int kHeadDim, int kGroup, bool kStaged>
__global__ void __launch_bounds__(kThreads, kGroup <= 4 ? kCtasPerSm : 1)
    DecodeAttentionKernel(DecodeArgs a) {
  // The work list and the first block ids are read before WaitForPriorGrid(): the step's
  // upload (a copy) and its page-table gather wrote them before any kernel of the layers, and
  // the kernel before this one has passed its own wait, so every grid before that one has
  // completed (no kernel here allows its dependents before its wait). q and K/V (the previous
  // kernels write the new tokens') are read after it, with coherent loads (LoadCoherent16).
  constexpr int kLanes = kHeadDim / 8;  // lanes per token
  constexpr int kSubs = 32 / kLanes;    // tokens per warp load
  constexpr int kTokPerWarp = kSubs * kUnroll;
  constexpr int kTokPerIter = kTokPerWarp * kWarps;
  // The warps' states for the CTA's final merge; the staged kernel puts them over its ring,
  // which is idle by then, so that four of its CTAs fit an SM.
  struct WarpStates {
    float m[kWarps][kGroup], l[kWarps][kGroup], acc[kWarps][kGroup][kHeadDim];
  };
  extern __shared__ uint4 ring[];  // staged: [stages][kUnroll][K, V][kThreads]
  static_assert(sizeof(WarpStates) <= 2 * kUnroll * 2 * kThreads * sizeof(uint4));
  WarpStates* states;
  if constexpr (kStaged) {
    states = reinterpret_cast<WarpStates*>(ring);
  } else {
    __shared__ WarpStates own;
    states = &own;
  }
  float(&s_m)[kWarps][kGroup] = states->m;
  float(&s_l)[kWarps][kGroup] = states->l;
  float(&s_acc)[kWarps][kGroup][kHeadDim] = states->acc;

  // The work fields are read before the bounds check (blockIdx.x < max_work_items always) so
  // the loads do not wait for each other.
  const int w = blockIdx.x;
  const MetaLayout& L = a.layout;
  const int num_work = a.meta[0];
  const int row = a.meta[L.work_row + w];
  const int tb = a.meta[L.work_begin + w], te = a.meta[L.work_end + w];
  const int first_block = a.meta[L.work_first_block + w];
  if (w >= num_work) return;
  const int seq = row / a.num_kv_heads, kvh = row % a.num_kv_heads;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int sub = lane / kLanes, li = lane % kLanes;
  const int32_t* blocks = a.indices + first_block;
  // Block ids: the register path fetches them one iteration ahead so their latency overlaps
  // the K/V loads; the staged path reads those of its first a.stages iterations here, so its
  // prologue issues them with no dependent load in between. pre[s] = iteration s's.
  constexpr int kPre = kStaged ? kMaxKvStages : 1;
  const int pre_iters = kStaged ? a.stages : 1;
  int pre[kPre][kUnroll];
#pragma unroll
  for (int s = 0; s < kPre; ++s) {
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int t = tb + warp * kTokPerWarp + s * kTokPerIter + u * kSubs + sub;
      pre[s][u] = s < pre_iters && t < te ? blocks[t >> a.block_shift] : 0;
    }
  }
  WaitForPriorGrid();
  AllowDependentsIfSmallGrid();

  float q[kGroup][8];
#pragma unroll
  for (int g = 0; g < kGroup; ++g) {
    if (g < a.group) {
      const T* qp = static_cast<const T*>(a.q) + seq * a.q_seq_stride +
                    static_cast<int64_t>(kvh * a.group + g) * kHeadDim + li * 8;
      Unpack8<T>(LoadCoherent16(qp), q[g]);
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
  const T* kp = static_cast<const T*>(a.k_pool);
  const T* vp = static_cast<const T*>(a.v_pool);
  const int mask = (1 << a.block_shift) - 1;
  // Offset of token t's 16 bytes for this lane in the pools.
  auto offset = [&](int block, int t) {
    return static_cast<int64_t>(block) * a.block_stride + (t & mask) * kHeadDim + li * 8;
  };
  // Online softmax over the tokens base + u * kSubs + sub (u < kUnroll) of one iteration.
  auto consume = [&](int base, const uint4(&kr)[kUnroll], const uint4(&vr)[kUnroll]) {
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
    // Sum the partial dots over the token's kLanes lanes: a transposing reduction (about half
    // the shuffles of one butterfly per score), then every lane gathers the sums.
    constexpr int kScores = kUnroll * kGroup;
    float v[kScores];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
#pragma unroll
      for (int g = 0; g < kGroup; ++g) v[u * kGroup + g] = s[u][g];
    }
    TransposeReduce<kLanes / 2, kScores>(v, li);
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
#pragma unroll
      for (int g = 0; g < kGroup; ++g) {
        const int idx = u * kGroup + g;
        if constexpr (kScores >= kLanes) {
          constexpr int kPerLane = kScores / kLanes;
          s[u][g] = __shfl_sync(0xffffffffu, v[idx % kPerLane], idx / kPerLane, kLanes);
        } else {
          s[u][g] = __shfl_sync(0xffffffffu, v[0], idx * (kLanes / kScores), kLanes);
        }
      }
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      if (base + u * kSubs + sub >= te) {
#pragma unroll
        for (int g = 0; g < kGroup; ++g) s[u][g] = -INFINITY;
      }
    }
    // Lazy rescaling: the running max m moves (and l, acc are rescaled) only when a score
    // exceeds it by more than kRescaleSlack somewhere in the warp (a warp-uniform branch), so
    // the weights exp2(s - m) stay <= 2^kRescaleSlack; l and acc use the same m, so the result
    // is the softmax all the same. Most iterations after the first few skip the rescale.
    float mx[kGroup];
    bool grow = false;
#pragma unroll
    for (int g = 0; g < kGroup; ++g) {
      mx[g] = m[g];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) mx[g] = fmaxf(mx[g], s[u][g]);
      grow = grow || mx[g] > m[g] + kRescaleSlack;
    }
    if (__any_sync(0xffffffffu, grow)) {
#pragma unroll
      for (int g = 0; g < kGroup; ++g) {
        const float corr = FastExp2(m[g] - mx[g]);
        m[g] = mx[g];
        l[g] *= corr;
#pragma unroll
        for (int i = 0; i < 8; ++i) acc[g][i] *= corr;
      }
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      float vf[8];
      Unpack8<T>(vr[u], vf);
#pragma unroll
      for (int g = 0; g < kGroup; ++g) {
        const float p = FastExp2(s[u][g] - m[g]);
        l[g] += p;
#pragma unroll
        for (int i = 0; i < 8; ++i) acc[g][i] = fmaf(p, vf[i], acc[g][i]);
      }
    }
  };
  if constexpr (kStaged) {
    // Each lane copies its own K/V vectors into its own slots of a ring of a.stages
    // iterations (cp.async, no registers held while they fly) and reads back only those, so
    // its own CpAsyncWait orders the reads: no barrier. While one iteration is consumed, the
    // next a.stages - 1 are in flight.
    auto slot = [&](int stage, int u, int kv) {
      return ring + ((stage * kUnroll + u) * 2 + kv) * kThreads + threadIdx.x;
    };
    int issue_base = tb + warp * kTokPerWarp, issue_stage = 0;
    auto issue = [&](const int(&ids)[kUnroll]) {
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int t = issue_base + u * kSubs + sub;
        const bool valid = t < te;
        const int64_t off = valid ? offset(ids[u], t) : 0;
        CpAsync16(slot(issue_stage, u, 0), kp + off, valid);
        CpAsync16(slot(issue_stage, u, 1), vp + off, valid);
      }
      CpAsyncCommit();
      issue_base += kTokPerIter;
      issue_stage = issue_stage + 1 == a.stages ? 0 : issue_stage + 1;
    };
#pragma unroll
    for (int s = 0; s + 1 < kPre; ++s) {
      if (s + 1 < a.stages) issue(pre[s]);
    }
    int blk[kUnroll];  // the block ids of the next iteration to issue
#pragma unroll
    for (int s = 0; s < kPre; ++s) {
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        if (s + 1 == a.stages) blk[u] = pre[s][u];
      }
    }
    int stage = 0;
    for (int base = tb + warp * kTokPerWarp; base < te; base += kTokPerIter) {
      issue(blk);  // a.stages - 1 iterations ahead of this one
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int t = issue_base + u * kSubs + sub;
        blk[u] = t < te ? blocks[t >> a.block_shift] : 0;
      }
      switch (a.stages) {  // uniform; wait_group takes an immediate
        case 2:
          CpAsyncWait<1>();
          break;
        case 3:
          CpAsyncWait<2>();
          break;
        default:
          CpAsyncWait<3>();
          break;
      }
      uint4 kr[kUnroll], vr[kUnroll];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        kr[u] = *slot(stage, u, 0);
        vr[u] = *slot(stage, u, 1);
      }
      consume(base, kr, vr);
      stage = stage + 1 == a.stages ? 0 : stage + 1;
    }
    CpAsyncWait<0>();  // the ring's last (empty) groups
    __syncthreads();   // every lane's copies landed: the ring may hold the warps' states
  } else {
    int blk[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) blk[u] = pre[0][u];
    for (int base = tb + warp * kTokPerWarp; base < te; base += kTokPerIter) {
      uint4 kr[kUnroll], vr[kUnroll];
      int cur[kUnroll];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        cur[u] = blk[u];
        const int t = base + kTokPerIter + u * kSubs + sub;
        blk[u] = t < te ? blocks[t >> a.block_shift] : 0;
      }
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int t = base + u * kSubs + sub;
        if (t < te) {
          const int64_t off = offset(cur[u], t);
          kr[u] = LoadCoherent16(kp + off);
          vr[u] = LoadCoherent16(vp + off);
        } else {
          kr[u] = make_uint4(0, 0, 0, 0);
          vr[u] = make_uint4(0, 0, 0, 0);
        }
      }
      consume(base, kr, vr);
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
  const int nsplit = a.meta[L.row_num_splits + row];
  const int slot = a.meta[L.work_slot + w];
  for (int idx = threadIdx.x; idx < a.group * kHeadDim; idx += kThreads) {
    const int g = idx / kHeadDim, d = idx % kHeadDim;
    float mx = -1e30f;
#pragma unroll
    for (int x = 0; x < kWarps; ++x) mx = fmaxf(mx, s_m[x][g]);
    float sum = 0.0f, o = 0.0f;
#pragma unroll
    for (int x = 0; x < kWarps; ++x) {
      const float c = exp2f(s_m[x][g] - mx);
      sum += s_l[x][g] * c;
      o += s_acc[x][g][d] * c;
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
}

// Combines the partials of split rows in one online pass per (row, head, dim).
// Grid: (rows that were split, group) Block: (head_dim).
template <typename T, int kHeadDim>
__global__ void __launch_bounds__(kHeadDim) DecodeMergeKernel(DecodeArgs a) {
  // The work list before the wait, as DecodeAttentionKernel; the partials after it.
  const int g = blockIdx.y, d = threadIdx.x;
  if (static_cast<int>(blockIdx.x) >= a.meta[1]) return;
  const MetaLayout& L = a.layout;
  const int row = a.meta[L.merge_row + blockIdx.x];
  const int ns = a.meta[L.row_num_splits + row];
  const int begin = a.meta[L.row_split_begin + row];
  WaitForPriorGrid();
  AllowDependentsIfSmallGrid();
  const int seq = row / a.num_kv_heads, kvh = row % a.num_kv_heads;
  float m = -INFINITY, sum = 0.0f, o = 0.0f;
#pragma unroll 8
  for (int i = 0; i < ns; ++i) {
    const int s = begin + i;
    const float lse = a.partial_lse[s * a.group + g];
    const float x = a.partial_o[(static_cast<int64_t>(s) * a.group + g) * kHeadDim + d];
    if (lse == -INFINITY) continue;
    const float mn = fmaxf(m, lse);
    const float c_old = exp2f(m - mn), c_new = exp2f(lse - mn);
    sum = sum * c_old + c_new;
    o = o * c_old + c_new * x;
    m = mn;
  }
  T* op = static_cast<T*>(a.out) + seq * a.out_seq_stride +
          static_cast<int64_t>(kvh * a.group + g) * kHeadDim + d;
  *op = FromFloat<T>(sum > 0.0f ? o / sum : 0.0f);
}

int GroupBucket(int group) { return group <= 1 ? 1 : group <= 2 ? 2 : group <= 4 ? 4 : 8; }

}  // namespace

cudaError_t RunDecodeAttention(const DecodePlan& plan, const PagedKvView& kv, DType dtype,
                               const void* q, int64_t q_seq_stride, void* out,
                               int64_t out_seq_stride, float scale, cudaStream_t stream) {
  const DecodePlanOptions& o = plan.options;
  if (kv.head_dim != o.head_dim || kv.num_kv_heads < 1 || kv.block_size < 1 ||
      !ValidKvStages(o.kv_stages) || (kv.block_size & (kv.block_size - 1)) != 0 ||
      plan.workspace == nullptr) {
    return cudaErrorInvalidValue;
  }
  const int work_grid = o.fixed_grid ? o.max_work_items : plan.num_work_items;
  const int merge_grid = o.fixed_grid ? o.max_rows : plan.num_merge_rows;
  if (work_grid == 0) return cudaSuccess;
  DecodeArgs a;
  a.layout = MetaLayout(o);
  a.meta =
      plan.device_meta != nullptr ? plan.device_meta : static_cast<const int32_t*>(plan.workspace);
  a.partial_o = reinterpret_cast<float*>(static_cast<int32_t*>(plan.workspace) + a.layout.total);
  a.partial_lse = a.partial_o + static_cast<int64_t>(o.max_work_items) * o.group_size * o.head_dim;
  a.indices = kv.indices;
  a.k_pool = kv.k_pool;
  a.v_pool = kv.v_pool;
  a.block_stride = kv.block_stride;
  a.block_shift = __builtin_ctz(static_cast<unsigned>(kv.block_size));
  a.num_kv_heads = kv.num_kv_heads;
  a.group = o.group_size;
  a.q = q;
  a.q_seq_stride = q_seq_stride;
  a.out = out;
  a.out_seq_stride = out_seq_stride;
  a.scale_log2 = scale * 1.4426950408889634f;
  a.stages = o.kv_stages;
  return DispatchDType(dtype, [&](auto t) {
    using T = decltype(t);
    return DispatchHeadDim(o.head_dim, [&](auto hd) {
      constexpr int D = decltype(hd)::value;
      auto launch = [&](auto staged) {
        constexpr bool kStaged = decltype(staged)::value;
        auto kernel = [&] {
          switch (GroupBucket(o.group_size)) {
            case 1:
              return DecodeAttentionKernel<T, D, 1, kStaged>;
            case 2:
              return DecodeAttentionKernel<T, D, 2, kStaged>;
            case 4:
              return DecodeAttentionKernel<T, D, 4, kStaged>;
            default:
              return DecodeAttentionKernel<T, D, 8, kStaged>;
          }
        }();
        const size_t smem = kStaged ? RingBytes(a.stages) : 0;
        cudaError_t e = cudaSuccess;
        // Above the 48 KB every kernel may use (kv_stages 4) only: the default needs no
        // attribute call, which keeps graph capture free of it.
        if (smem > kDefaultDynamicSmem) {
          e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                   static_cast<int>(smem));
        }
        if (e == cudaSuccess) {
          e = LaunchOverlapped(kernel, dim3(work_grid), dim3(kThreads), smem, stream, a);
        }
        if (e == cudaSuccess && merge_grid > 0) {
          e = LaunchOverlapped(DecodeMergeKernel<T, D>, dim3(merge_grid, o.group_size), dim3(D), 0,
                               stream, a);
        }
        return e;
      };
      return o.kv_stages > 0 ? launch(std::true_type{}) : launch(std::false_type{});
    });
  });
}

}  // namespace hkv::kernels
