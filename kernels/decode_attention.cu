// Paged per-head decode attention with GQA and split-K; see decode_attention.h.
//
// NOTE(kernels): one CTA = 4 warps over one work item. A warp reads 16-byte K/V vectors; the
// kHeadDim/8 lanes of a "subgroup" hold one token, so a warp load covers 2 (d=128) or 4 (d=64)
// consecutive tokens, and kUnroll loads of K and V are in flight before any math: in registers,
// or (DecodePlanOptions::kv_stages > 0) kv_stages - 1 iterations ahead in a per-lane cp.async
// ring in shared memory, which keeps more bytes in flight per SM at the same occupancy. Each lane
// keeps the online-softmax state (m, l, acc[8]) of every query head of the group for its 8
// dims, so K/V bytes are read exactly once per group.

#include <algorithm>
#include <cmath>
#include <iterator>
#include <numeric>
#include <type_traits>

#include "kernels/cuda_common.cuh"
#include "kernels/decode_attention.h"

namespace hkv::kernels {
namespace {

constexpr int kThreads = 128;
constexpr int kWarps = kThreads / 32;
#ifndef HKV_DECODE_UNROLL
#define HKV_DECODE_UNROLL 4  // 16-byte K and V loads in flight per lane per iteration
#endif
constexpr int kUnroll = HKV_DECODE_UNROLL;
constexpr int kMetaHeader = 2;  // num_work, num_merge_rows
constexpr int kCtasPerSm = 4;
constexpr size_t kDefaultDynamicSmem = 48 * 1024;
// How far (log2 units) a score may pass the running max before the kernel rescales.
constexpr float kRescaleSlack = 8.0f;

// Offsets (in int32) of the arrays inside the workspace meta block.
struct MetaLayout {
  int64_t work_row, work_begin, work_end, work_slot, work_first_block, row_split_begin,
      row_num_splits, merge_row, total;
  explicit MetaLayout(const DecodePlanOptions& o) {
    work_row = kMetaHeader;
    work_begin = work_row + o.max_work_items;
    work_end = work_begin + o.max_work_items;
    work_slot = work_end + o.max_work_items;
    work_first_block = work_slot + o.max_work_items;
    row_split_begin = work_first_block + o.max_work_items;
    row_num_splits = row_split_begin + o.max_rows;
    merge_row = row_num_splits + o.max_rows;
    total = (merge_row + o.max_rows + 63) / 64 * 64;
  }
};

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

// Simulated makespan of the work list on `slots` CTA slots, items issued in order.
// REQUIRES: costs sorted in descending order (LPT), so the first `slots` items each start at 0
// on a slot of their own and the slot that frees first is always the heap's top.
double Makespan(const std::vector<int64_t>& costs, int slots) {
  const size_t first = std::min(costs.size(), static_cast<size_t>(std::max(slots, 1)));
  std::vector<int64_t> free_at(costs.begin(), costs.begin() + first);  // a min-heap below
  std::make_heap(free_at.begin(), free_at.end(), std::greater<int64_t>());
  int64_t end = costs.empty() ? 0 : costs.front();
  for (size_t i = first; i < costs.size(); ++i) {
    std::pop_heap(free_at.begin(), free_at.end(), std::greater<int64_t>());
    free_at.back() += costs[i];
    end = std::max(end, free_at.back());
    std::push_heap(free_at.begin(), free_at.end(), std::greater<int64_t>());
  }
  return static_cast<double>(end);
}

constexpr int64_t kItemOverheadTokens = 48;  // fixed cost of a CTA, in token-equivalents
constexpr int64_t kChunkAlign = 64;
#ifndef HKV_DECODE_MIN_CHUNK
#define HKV_DECODE_MIN_CHUNK 128
#endif
constexpr int64_t kMinChunk = HKV_DECODE_MIN_CHUNK;  // tokens; shorter splits cost a merge
constexpr int64_t kSimulateMaxItems = 2048;          // above this, ChooseChunk uses the LPT bound

// Start of split i of ns over len tokens, aligned down to kChunkAlign tokens.
int64_t SplitBegin(int64_t len, int64_t i, int64_t ns) {
  return i == 0 ? 0 : i >= ns ? len : (len * i / ns) / kChunkAlign * kChunkAlign;
}

// Splits of each row for chunk size `chunk` (0 = no split).
int64_t SplitsFor(int64_t len, int64_t chunk) {
  return chunk <= 0 || len <= chunk ? 1 : (len + chunk - 1) / chunk;
}

// Picks the split chunk (0 = no split): among a few candidates, the one whose work list has
// the smallest simulated makespan on `slots` CTA slots in LPT order. Runs on the host for every
// layer of every decode step whose rows differ from the previous layer's (HeadKV's ragged rows:
// all of them), so it avoids work that cannot change the answer: candidates that round to the
// same chunk are evaluated once, and a list of no more items than slots needs no simulation
// (each item gets its own slot: the makespan is the largest item).
int64_t ChooseChunk(const std::vector<int64_t>& lens, int64_t total, int64_t longest, int slots,
                    int64_t max_work_items) {
  // Fast path: no row is longer than an even share of the GPU, so splitting cannot help.
  if (longest * slots <= total) return 0;
  int64_t best_chunk = 0;
  double best_time = 1e300;
  const double factors[] = {0.0, 1.0, 2.0, 4.0, 8.0};
  int64_t tried[std::size(factors)];
  int num_tried = 0;
  std::vector<int64_t> costs;
  for (double f : factors) {
    int64_t chunk = 0;
    if (f > 0.0) {
      chunk = static_cast<int64_t>(std::ceil(static_cast<double>(total) / (slots * f)));
      chunk = std::max<int64_t>(kMinChunk, (chunk + kChunkAlign - 1) / kChunkAlign * kChunkAlign);
      // A chunk no shorter than the longest row splits nothing: the same list as chunk 0.
      if (chunk >= longest) chunk = 0;
    }
    if (std::find(tried, tried + num_tried, chunk) != tried + num_tried) continue;
    tried[num_tried++] = chunk;
    int64_t items = 0;
    for (int64_t len : lens) items += SplitsFor(len, chunk);
    if (items > max_work_items) continue;
    // Calls f(cost) for every work item of this chunk, in row order.
    auto for_each_cost = [&](auto&& f) {
      for (int64_t len : lens) {
        const int64_t ns = SplitsFor(len, chunk);
        for (int64_t i = 0; i < ns; ++i) {
          f(SplitBegin(len, i + 1, ns) - SplitBegin(len, i, ns) + kItemOverheadTokens);
        }
      }
    };
    double t = 0.0;
    if (items <= slots || items > kSimulateMaxItems) {
      // One item per slot: the largest item. Many items (large batches): the LPT bound, close
      // to the simulation, in O(items) instead of O(items log slots).
      int64_t sum = 0, biggest = 0;
      for_each_cost([&](int64_t c) {
        sum += c;
        biggest = std::max(biggest, c);
      });
      t = items <= slots ? static_cast<double>(biggest)
                         : std::max(static_cast<double>(biggest), static_cast<double>(sum) / slots);
    } else {
      costs.clear();
      costs.reserve(static_cast<size_t>(items));
      for_each_cost([&](int64_t c) { costs.push_back(c); });
      std::sort(costs.begin(), costs.end(), std::greater<int64_t>());
      t = Makespan(costs, slots);
    }
    t *= 1.0 + 1e-3 * f;  // prefer fewer splits on ties
    if (t < best_time) {
      best_time = t;
      best_chunk = chunk;
    }
  }
  return best_chunk;
}

}  // namespace

size_t DecodeWorkspaceBytes(const DecodePlanOptions& o) {
  const MetaLayout L(o);
  const size_t floats = static_cast<size_t>(o.max_work_items) * o.group_size * (o.head_dim + 1);
  return static_cast<size_t>(L.total) * sizeof(int32_t) + floats * sizeof(float);
}

size_t DecodeMetaInts(const DecodePlanOptions& o) { return MetaLayout(o).total; }

cudaError_t PlanDecodeAttention(const DecodePlanOptions& o, const int32_t* host_indptr,
                                const int32_t* host_last_len, int32_t num_rows, int32_t block_size,
                                void* workspace, cudaStream_t stream, DecodePlan* plan,
                                const int32_t* host_row_ids) {
  if (plan == nullptr || workspace == nullptr) return cudaErrorInvalidValue;
  std::vector<int32_t> meta(DecodeMetaInts(o));
  const cudaError_t e = BuildDecodePlan(o, host_indptr, host_last_len, num_rows, block_size,
                                        host_row_ids, meta.data(), plan);
  if (e != cudaSuccess) return e;
  plan->host_meta = std::move(meta);
  plan->workspace = workspace;
  plan->device_meta = nullptr;
  return cudaMemcpyAsync(workspace, plan->host_meta.data(),
                         plan->host_meta.size() * sizeof(int32_t), cudaMemcpyHostToDevice, stream);
}

cudaError_t BuildDecodePlan(const DecodePlanOptions& o, const int32_t* host_indptr,
                            const int32_t* host_last_len, int32_t num_rows, int32_t block_size,
                            const int32_t* host_row_ids, int32_t* meta, DecodePlan* plan) {
  if (plan == nullptr || meta == nullptr || o.group_size < 1 || o.group_size > 8 ||
      (o.head_dim != 64 && o.head_dim != 128) || o.max_rows < 1 || o.max_work_items < o.max_rows ||
      !ValidKvStages(o.kv_stages) || num_rows < 0 || num_rows > o.max_rows || block_size < 1 ||
      (block_size & (block_size - 1)) != 0) {
    return cudaErrorInvalidValue;
  }
  int num_sms = o.num_sms;
  if (num_sms <= 0) {
    int dev = 0;
    cudaError_t e = cudaGetDevice(&dev);
    if (e == cudaSuccess) e = cudaDeviceGetAttribute(&num_sms, cudaDevAttrMultiProcessorCount, dev);
    if (e != cudaSuccess) return e;
  }
  std::vector<int64_t> lens(num_rows);
  std::vector<int32_t> first_block(num_rows);
  int64_t total = 0, longest = 0;
  for (int r = 0; r < num_rows; ++r) {
    const int32_t csr = host_row_ids != nullptr ? host_row_ids[r] : r;
    const int32_t blocks = csr < 0 ? -1 : host_indptr[csr + 1] - host_indptr[csr];
    if (blocks < 0 || (blocks > 0 && (host_last_len[csr] < 1 || host_last_len[csr] > block_size))) {
      return cudaErrorInvalidValue;  // malformed page table
    }
    lens[r] = PagedRowLength(host_indptr, host_last_len, csr, block_size);
    first_block[r] = host_indptr[csr];
    total += lens[r];
    longest = std::max(longest, lens[r]);
  }
  const int slots = num_sms * kCtasPerSm;
  const int64_t best_chunk = ChooseChunk(lens, total, longest, slots, o.max_work_items);
  // Work items: (row, begin, end, slot); slots of a row are contiguous for the merge.
  struct Item {
    int32_t row, begin, end, slot;
  };
  std::vector<Item> items;
  const MetaLayout L(o);
  std::fill(meta, meta + L.total, 0);
  for (int r = 0; r < num_rows; ++r) {
    const int64_t ns = SplitsFor(lens[r], best_chunk);
    meta[L.row_split_begin + r] = static_cast<int32_t>(items.size());
    meta[L.row_num_splits + r] = static_cast<int32_t>(ns);
    for (int64_t i = 0; i < ns; ++i) {
      const int64_t b = SplitBegin(lens[r], i, ns), e = SplitBegin(lens[r], i + 1, ns);
      items.push_back({r, static_cast<int32_t>(b), static_cast<int32_t>(e),
                       static_cast<int32_t>(items.size())});
    }
  }
  // Longest items first, ties in row order (a stable sort by length, descending). Items are
  // at most the longest row long, so where that is short next to the item count (HeadKV's
  // ragged rows, large batches: thousands of items every layer of every step) a counting sort
  // gives the same order in O(items + longest).
  int32_t max_item = 0;
  for (const Item& it : items) max_item = std::max(max_item, it.end - it.begin);
  if (static_cast<size_t>(max_item) <= 4 * items.size()) {
    std::vector<int32_t> start(static_cast<size_t>(max_item) + 2, 0);
    for (const Item& it : items) ++start[max_item - (it.end - it.begin) + 1];
    for (size_t k = 1; k < start.size(); ++k) start[k] += start[k - 1];
    std::vector<Item> sorted(items.size());
    for (const Item& it : items) sorted[start[max_item - (it.end - it.begin)]++] = it;
    items.swap(sorted);
  } else {
    std::stable_sort(items.begin(), items.end(), [](const Item& x, const Item& y) {
      return x.end - x.begin > y.end - y.begin;
    });
  }
  int32_t num_merge = 0;
  for (int r = 0; r < num_rows; ++r) {
    if (meta[L.row_num_splits + r] > 1) meta[L.merge_row + num_merge++] = r;
  }
  meta[0] = static_cast<int32_t>(items.size());
  meta[1] = num_merge;
  plan->num_merge_rows = num_merge;
  for (size_t i = 0; i < items.size(); ++i) {
    meta[L.work_row + i] = items[i].row;
    meta[L.work_begin + i] = items[i].begin;
    meta[L.work_end + i] = items[i].end;
    meta[L.work_slot + i] = items[i].slot;
    meta[L.work_first_block + i] = first_block[items[i].row];
  }
  plan->options = o;
  plan->num_rows = num_rows;
  plan->num_work_items = static_cast<int32_t>(items.size());
  plan->chunk_tokens = static_cast<int32_t>(best_chunk > 0 ? best_chunk : longest);
  plan->row_lengths = std::move(lens);
  return cudaSuccess;
}

bool RebaseDecodePlan(const DecodePlan& planned, const int32_t* planned_meta,
                      const int32_t* host_indptr, const int32_t* host_last_len, int32_t block_size,
                      const int32_t* host_row_ids, int32_t* meta) {
  const int32_t rows = planned.num_rows;
  if (static_cast<int32_t>(planned.row_lengths.size()) != rows) return false;
  for (int32_t r = 0; r < rows; ++r) {
    const int32_t csr = host_row_ids != nullptr ? host_row_ids[r] : r;
    if (PagedRowLength(host_indptr, host_last_len, csr, block_size) != planned.row_lengths[r]) {
      return false;
    }
  }
  const MetaLayout L(planned.options);
  std::copy(planned_meta, planned_meta + L.total, meta);
  for (int32_t i = 0; i < planned.num_work_items; ++i) {
    const int32_t r = meta[L.work_row + i];
    meta[L.work_first_block + i] = host_indptr[host_row_ids != nullptr ? host_row_ids[r] : r];
  }
  return true;
}

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
