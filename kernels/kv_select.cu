// Fused SnapKV selection: window scores, max-pool, per-head top-cap, scatter; see kv_select.h.
//
// Kernels (per prompt, one layer):
//   1. WindowStatsKernel  Grid: (ceil(n/256), Hkv) Block: (128): one thread per key computes
//      the nq = w*group window logits and reduces (max, sum exp) per chunk.
//   2. WindowLseKernel    Grid: (Hkv) Block: (32*8): merges the chunks -> log-sum-exp.
//   3. WindowScoreKernel  Grid: (ceil((n-w)/128), Hkv) Block: (128): recomputes the logits of
//      the first n-w keys, sums the probabilities over the window and the group.
//   4. SelectKernel       Grid: (Hkv) Block: (1024): max-pool, radix select of the cap-th
//      largest score (exact, ties -> lower position), ordered compaction, window append. The
//      radix passes count with one atomic per distinct bin of a warp (WarpHistAdd) and pick
//      the bin with one warp's scan (WarpPickBin).
//   5. ScatterKernel      Grid: (ceil(n*d/8/256), Hkv) Block: (256): copies kept K/V.
// Adaptive selection runs, between 3 and 4:
//   3a. PoolKernel        Grid: (ceil((n-w)/256), Hkv) Block: (256): max-pool (4 then reuses it).
//   3b. AdaKvSplitKernel  Grid: (1) Block: (1024): the heads' caps (exact 64-bit radix selects
//       over (score, flattened index) keys) and the packed block offsets of each head.
//      In place instead: CompactKernel Grid: (Hkv) Block: (1024): moves the kept K/V of a
//      head's row to its first slots, one tile of tokens at a time (all reads of a tile, a
//      barrier, then its writes: a later tile's sources lie past every slot written before).

#include <algorithm>

#include "kernels/cuda_common.cuh"
#include "kernels/kv_select.h"

namespace hkv::kernels {
namespace {

constexpr int kKeysPerCta = 256;  // 2 keys a thread: short prompts still spread over CTAs
constexpr int kStatThreads = 128;
constexpr int kSelectThreads = 1024;
constexpr float kLog2e = 1.4426950408889634f;

struct Layout {
  int64_t stats, lse, raw, pooled, ada_indptr, total;  // byte offsets
  Layout(int32_t n, int32_t w, int32_t nq, int32_t hkv) {
    const int64_t chunks = (n + kKeysPerCta - 1) / kKeysPerCta;
    const int64_t past = std::max(0, n - w);
    auto align = [](int64_t x) { return (x + 255) / 256 * 256; };
    stats = 0;
    lse = align(stats + hkv * chunks * nq * 2 * sizeof(float));
    raw = align(lse + hkv * nq * sizeof(float));
    pooled = align(raw + hkv * past * sizeof(float));
    ada_indptr = align(pooled + hkv * past * sizeof(float));
    total = align(ada_indptr + (hkv + 1) * sizeof(int32_t));
  }
};

struct Params {
  const void* q;
  const void* k;
  int64_t q_stride, kv_stride;
  int32_t n, w, past, group, nq, num_q_heads, chunks;
  float scale_log2;
  float2* stats;  // [Hkv, chunks, nq] (max, sum) in log2 domain
  float* lse;     // [Hkv, nq]
  float* raw;     // [Hkv, past]
  // In place: keys from the paged rows first_row + kvh (k is then the K pool).
  bool paged;
  const int32_t* indptr;
  const int32_t* indices;
  int32_t first_row, block_shift;
  int64_t block_stride;
};

// Address of element 0 of token j's vector in row `row` of a paged pool.
template <typename T>
__device__ __forceinline__ int64_t PagedOffset(const int32_t* indptr, const int32_t* indices,
                                               int row, int j, int block_shift,
                                               int64_t block_stride, int head_dim) {
  return static_cast<int64_t>(indices[indptr[row] + (j >> block_shift)]) * block_stride +
         static_cast<int64_t>(j & ((1 << block_shift) - 1)) * head_dim;
}

// Loads the nq window queries of kv head `kvh` into shared memory [kNq, kHeadDim] as
// pre-scaled floats; rows nq..kNq-1 are zero. 16-byte loads, all of a thread's issued before
// the first is used (one memory latency, not one per element: a short prompt's kernels are
// mostly this). Called by kStatThreads threads; rows are 16-byte aligned (as K's).
template <typename T, int kHeadDim, int kNq>
__device__ void LoadWindowQueries(const Params& p, int kvh, float* sq) {
  constexpr int kVecsPerRow = kHeadDim / 8, kVecs = kNq * kVecsPerRow;
  constexpr int kPerThread = (kVecs + kStatThreads - 1) / kStatThreads;
  uint4 raw[kPerThread];
#pragma unroll
  for (int i = 0; i < kPerThread; ++i) {
    const int idx = threadIdx.x + i * kStatThreads, v = idx / kVecsPerRow;
    raw[i] = make_uint4(0, 0, 0, 0);
    if (idx < kVecs && v < p.nq) {
      const int t = v / p.group, g = v % p.group, d = (idx % kVecsPerRow) * 8;
      raw[i] = LoadNc16(static_cast<const T*>(p.q) + t * p.q_stride +
                        static_cast<int64_t>(kvh * p.group + g) * kHeadDim + d);
    }
  }
#pragma unroll
  for (int i = 0; i < kPerThread; ++i) {
    const int idx = threadIdx.x + i * kStatThreads;
    if (idx >= kVecs) continue;
    float f[8];
    Unpack8<T>(raw[i], f);  // zero bits -> 0.0f for the padding rows
#pragma unroll
    for (int e = 0; e < 8; ++e) sq[idx * 8 + e] = f[e] * p.scale_log2;
  }
}

// Logits (log2 domain) of key j against the nq queries in `sq`.
template <typename T, int kHeadDim, int kNq>
__device__ __forceinline__ void KeyLogits(const Params& p, int kvh, int j, const float* sq,
                                          float* s) {
#pragma unroll
  for (int v = 0; v < kNq; ++v) s[v] = 0.0f;
  const T* k = static_cast<const T*>(p.k) +
               (p.paged ? PagedOffset<T>(p.indptr, p.indices, p.first_row + kvh, j, p.block_shift,
                                         p.block_stride, kHeadDim)
                        : j * p.kv_stride + static_cast<int64_t>(kvh) * kHeadDim);
#pragma unroll 1
  for (int dc = 0; dc < kHeadDim; dc += 8) {
    float kf[8];
    Unpack8<T>(LoadNc16(k + dc), kf);
#pragma unroll
    for (int v = 0; v < kNq; ++v) {
      const float4 a = *reinterpret_cast<const float4*>(sq + v * kHeadDim + dc);
      const float4 b = *reinterpret_cast<const float4*>(sq + v * kHeadDim + dc + 4);
      s[v] += a.x * kf[0] + a.y * kf[1] + a.z * kf[2] + a.w * kf[3] + b.x * kf[4] + b.y * kf[5] +
              b.z * kf[6] + b.w * kf[7];
    }
  }
}

template <typename T, int kHeadDim, int kNq>
__global__ void __launch_bounds__(kStatThreads) WindowStatsKernel(Params p) {
  extern __shared__ __align__(16) float sq[];  // [kNq, head_dim]
  __shared__ float s_m[kStatThreads / 32][kNq], s_l[kStatThreads / 32][kNq];
  const int kvh = blockIdx.y;
  LoadWindowQueries<T, kHeadDim, kNq>(p, kvh, sq);
  __syncthreads();
  float m[kNq], l[kNq];
#pragma unroll
  for (int v = 0; v < kNq; ++v) {
    m[v] = -INFINITY;
    l[v] = 0.0f;
  }
  const int end = min(p.n, (blockIdx.x + 1) * kKeysPerCta);
  for (int j = blockIdx.x * kKeysPerCta + threadIdx.x; j < end; j += kStatThreads) {
    float s[kNq];
    KeyLogits<T, kHeadDim, kNq>(p, kvh, j, sq, s);
    const bool before_window = j < p.past;  // seen by every window query
#pragma unroll
    for (int v = 0; v < kNq; ++v) {
      // Window query t = v / group sees keys 0 .. past + t.
      if (v < p.nq && (before_window || j <= p.past + v / p.group)) {
        const float mn = fmaxf(m[v], s[v]);
        l[v] = l[v] * exp2f(m[v] - mn) + exp2f(s[v] - mn);
        m[v] = mn;
      }
    }
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int v = 0; v < kNq; ++v) {
    float mv = m[v], lv = l[v];
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      const float mo = __shfl_xor_sync(0xffffffffu, mv, o);
      const float lo = __shfl_xor_sync(0xffffffffu, lv, o);
      const float mn = fmaxf(mv, mo);
      lv = (mv == -INFINITY ? 0.0f : lv * exp2f(mv - mn)) +
           (mo == -INFINITY ? 0.0f : lo * exp2f(mo - mn));
      mv = mn;
    }
    if (lane == 0) {
      s_m[warp][v] = mv;
      s_l[warp][v] = lv;
    }
  }
  __syncthreads();
  for (int v = threadIdx.x; v < p.nq; v += kStatThreads) {
    float mv = -INFINITY, lv = 0.0f;
    for (int x = 0; x < kStatThreads / 32; ++x) {
      const float mo = s_m[x][v], lo = s_l[x][v];
      const float mn = fmaxf(mv, mo);
      lv = (mv == -INFINITY ? 0.0f : lv * exp2f(mv - mn)) +
           (mo == -INFINITY ? 0.0f : lo * exp2f(mo - mn));
      mv = mn;
    }
    p.stats[(static_cast<int64_t>(kvh) * p.chunks + blockIdx.x) * p.nq + v] = make_float2(mv, lv);
  }
}

__global__ void WindowLseKernel(Params p) {
  const int kvh = blockIdx.x, lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  for (int v = warp; v < p.nq; v += blockDim.x / 32) {
    float mv = -INFINITY, lv = 0.0f;
    for (int c = lane; c < p.chunks; c += 32) {
      const float2 st = p.stats[(static_cast<int64_t>(kvh) * p.chunks + c) * p.nq + v];
      const float mn = fmaxf(mv, st.x);
      lv = (mv == -INFINITY ? 0.0f : lv * exp2f(mv - mn)) +
           (st.x == -INFINITY ? 0.0f : st.y * exp2f(st.x - mn));
      mv = mn;
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      const float mo = __shfl_xor_sync(0xffffffffu, mv, o);
      const float lo = __shfl_xor_sync(0xffffffffu, lv, o);
      const float mn = fmaxf(mv, mo);
      lv = (mv == -INFINITY ? 0.0f : lv * exp2f(mv - mn)) +
           (mo == -INFINITY ? 0.0f : lo * exp2f(mo - mn));
      mv = mn;
    }
    if (lane == 0) p.lse[kvh * p.nq + v] = mv + log2f(lv);
  }
}

template <typename T, int kHeadDim, int kNq>
__global__ void __launch_bounds__(kStatThreads) WindowScoreKernel(Params p) {
  extern __shared__ __align__(16) float sq[];
  __shared__ float s_lse[kNq];
  const int kvh = blockIdx.y;
  LoadWindowQueries<T, kHeadDim, kNq>(p, kvh, sq);
  for (int v = threadIdx.x; v < kNq; v += blockDim.x) {
    s_lse[v] = v < p.nq ? p.lse[kvh * p.nq + v] : INFINITY;
  }
  __syncthreads();
  const int j = blockIdx.x * kStatThreads + threadIdx.x;
  if (j >= p.past) return;
  float s[kNq];
  KeyLogits<T, kHeadDim, kNq>(p, kvh, j, sq, s);
  // Mean over the window of each query head, then mean over the group (headkv's order).
  float total = 0.0f;
  for (int g = 0; g < p.group; ++g) {
    float head = 0.0f;
#pragma unroll
    for (int v = 0; v < kNq; ++v) {
      if (v < p.nq && v % p.group == g) head += exp2f(s[v] - s_lse[v]);
    }
    total += head / static_cast<float>(p.w);
  }
  p.raw[static_cast<int64_t>(kvh) * p.past + j] = total / static_cast<float>(p.group);
}

// Order-preserving key: larger float -> larger key; NaN lowest; -0 == +0.
__device__ __forceinline__ uint32_t RankKey(float f) {
  if (f != f) return 0u;
  if (f == 0.0f) f = 0.0f;
  const uint32_t b = __float_as_uint(f);
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

// Exclusive block scan of `v`; returns the prefix and stores the block total in *total.
__device__ int BlockExclusiveScan(int v, int* scratch, int* total) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  int x = v;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const int y = __shfl_up_sync(0xffffffffu, x, o);
    if (lane >= o) x += y;
  }
  __syncthreads();
  if (lane == 31) scratch[warp] = x;
  __syncthreads();
  if (warp == 0) {
    int w = lane < (blockDim.x >> 5) ? scratch[lane] : 0;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const int y = __shfl_up_sync(0xffffffffu, w, o);
      if (lane >= o) w += y;
    }
    scratch[lane] = w;  // inclusive prefix of warp totals
  }
  __syncthreads();
  *total = scratch[(blockDim.x >> 5) - 1];
  return x - v + (warp > 0 ? scratch[warp - 1] : 0);
}

// Adds 1 to hist[bin] for each active lane, one shared-memory atomic per distinct bin of the
// warp (scores of a prompt share their top bits: per-lane atomics would serialise on one
// bin). Every lane of the warp must call it (inactive lanes with active = false).
__device__ __forceinline__ void WarpHistAdd(int* hist, int bin, bool active) {
  const unsigned mask = __ballot_sync(0xffffffffu, active);
  if (!active) return;
  const unsigned peers = __match_any_sync(mask, bin);
  if ((threadIdx.x & 31) == __ffs(peers) - 1) atomicAdd(&hist[bin], __popc(peers));
}

// One radix-select step over a 256-bin histogram, by the 32 lanes of one warp: the highest bin
// b whose count, with every higher bin's, reaches `rem` (b = 0 when none does), and rem less
// the higher bins' counts. The same answer as walking the bins down from 255 one by one.
template <typename Rem>
__device__ __forceinline__ void WarpPickBin(const int* hist, Rem rem, int* bin, Rem* rem_out) {
  const int lane = threadIdx.x & 31;
  int c[8];  // lane's bins 255 - 8 * lane - k, k = 0..7 (high to low)
  Rem total = 0;
#pragma unroll
  for (int k = 0; k < 8; ++k) {
    c[k] = hist[255 - 8 * lane - k];
    total += c[k];
  }
  Rem incl = total;  // bins above and in this lane's (lanes 0 .. lane)
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const Rem y = __shfl_up_sync(0xffffffffu, incl, o);
    if (lane >= o) incl += y;
  }
  const unsigned hit = __ballot_sync(0xffffffffu, incl >= rem);
  if (hit == 0) {  // Fewer keys than rem: the walk ends at bin 0.
    const Rem all = __shfl_sync(0xffffffffu, incl, 31);
    if (lane == 0) {
      *bin = 0;
      *rem_out = rem - (all - hist[0]);
    }
    return;
  }
  const int first = __ffs(hit) - 1;
  if (lane == first) {
    Rem above = incl - total;
    int b = 255 - 8 * lane;
#pragma unroll
    for (int k = 0; k < 8; ++k) {
      if (above + c[k] >= rem) break;
      above += c[k];
      --b;
    }
    *bin = b;
    *rem_out = rem - above;
  }
}

struct SelectParams {
  const float* raw;  // [Hkv, past]
  float* pooled;     // [Hkv, past]
  float* scores_out;
  const int32_t* caps;
  int32_t* kept_count;
  int32_t* kept_index;  // [Hkv, n]
  int32_t n, w, past, pool_kernel;
  bool pooled_ready;  // PoolKernel already wrote `pooled` (adaptive selection)
};

// Max-pools head kvh's raw scores into pooled (and scores_out), threads [first, ..) striding
// by `stride`.
__device__ __forceinline__ void PoolScores(const SelectParams& p, int kvh, int first, int stride) {
  const float* raw = p.raw + static_cast<int64_t>(kvh) * p.past;
  float* pooled = p.pooled + static_cast<int64_t>(kvh) * p.past;
  const int half = p.pool_kernel / 2;
  for (int j = first; j < p.past; j += stride) {
    const int lo = max(0, j - half), hi = min(p.past - 1, j - half + p.pool_kernel - 1);
    float mx = raw[lo];
    for (int t = lo + 1; t <= hi; ++t) mx = fmaxf(mx, raw[t]);
    pooled[j] = mx;
    if (p.scores_out != nullptr) p.scores_out[static_cast<int64_t>(kvh) * p.past + j] = mx;
  }
}

__global__ void PoolKernel(SelectParams p) {
  PoolScores(p, blockIdx.y, blockIdx.x * blockDim.x + threadIdx.x, gridDim.x * blockDim.x);
}

__global__ void __launch_bounds__(kSelectThreads) SelectKernel(SelectParams p) {
  __shared__ int hist[256];
  __shared__ int scratch[32];
  __shared__ uint32_t s_prefix, s_mask;
  __shared__ int s_rem, s_bin;
  const int kvh = blockIdx.x;
  const float* pooled = p.pooled + static_cast<int64_t>(kvh) * p.past;
  if (!p.pooled_ready) PoolScores(p, kvh, threadIdx.x, blockDim.x);
  const int cap = min(max(p.caps[kvh], 0), p.past);
  if (threadIdx.x == 0) {
    s_prefix = 0;
    s_mask = 0;
    s_rem = cap;
  }
  __syncthreads();
  // Radix select (8 bits a pass, MSB first) of the cap-th largest key.
  if (cap > 0 && cap < p.past) {
    for (int shift = 24; shift >= 0; shift -= 8) {
      for (int b = threadIdx.x; b < 256; b += blockDim.x) hist[b] = 0;
      __syncthreads();
      const uint32_t prefix = s_prefix, mask = s_mask;
      for (int base = 0; base < p.past; base += blockDim.x) {  // whole warps for WarpHistAdd
        const int j = base + threadIdx.x;
        const uint32_t u = j < p.past ? RankKey(pooled[j]) : 0u;
        WarpHistAdd(hist, (u >> shift) & 255, j < p.past && (u & mask) == prefix);
      }
      __syncthreads();
      if (threadIdx.x < 32) WarpPickBin(hist, s_rem, &s_bin, &s_rem);
      __syncthreads();
      if (threadIdx.x == 0) {
        s_prefix = prefix | (static_cast<uint32_t>(s_bin) << shift);
        s_mask = mask | (255u << shift);
      }
      __syncthreads();
    }
  }
  // Keep u > T, and the first s_rem positions with u == T. cap == past keeps everything.
  const uint32_t thresh = s_prefix;
  const int need_eq = s_rem;
  const bool keep_all = cap >= p.past;
  int32_t* out = p.kept_index + static_cast<int64_t>(kvh) * p.n;
  int eq_base = 0, out_base = 0;
  for (int start = 0; start < p.past && cap > 0; start += blockDim.x) {
    const int j = start + threadIdx.x;
    uint32_t u = 0;
    if (j < p.past) u = RankKey(pooled[j]);
    const bool in = j < p.past;
    const int is_eq = in && !keep_all && u == thresh;
    int eq_total;
    const int eq_rank = eq_base + BlockExclusiveScan(is_eq, scratch, &eq_total);
    const int keep = in && (keep_all || u > thresh || (is_eq && eq_rank < need_eq));
    int keep_total;
    const int pos = out_base + BlockExclusiveScan(keep, scratch, &keep_total);
    if (keep) out[pos] = j;
    eq_base += eq_total;
    out_base += keep_total;
  }
  for (int i = threadIdx.x; i < p.w; i += blockDim.x) out[cap + i] = p.past + i;
  if (threadIdx.x == 0) p.kept_count[kvh] = cap + p.w;
}

struct AdaParams {
  const float* pooled;  // [Hkv, past]
  int32_t num_heads, past, floor_cap, w, block_shift;
  int64_t total;    // tokens beside the windows, num_heads * floor_cap <= total <= heads * past
  int32_t* caps;    // out [Hkv]
  int32_t* indptr;  // out [Hkv + 1]: head h's blocks are [indptr[h], indptr[h + 1])
};

// Unique ranking key of (head h, position j): pooled score first, then the lower flattened
// index h * past + j (AdaKvAllocate's ties: lower head, then lower position).
__device__ __forceinline__ uint64_t AdaKey(const AdaParams& p, int h, int j) {
  const uint32_t flat = static_cast<uint32_t>(h) * static_cast<uint32_t>(p.past) + j;
  const uint32_t u = RankKey(p.pooled[static_cast<int64_t>(h) * p.past + j]);
  return (static_cast<uint64_t>(u) << 32) | (0xffffffffu - flat);
}

struct RadixShared {
  int hist[256];
  uint64_t prefix, mask;
  int64_t rem;
  int bin;
};

// The k-th largest (k >= 1, at most the candidates) of the unique keys AdaKey(h, j) over
// heads [h_lo, h_hi) and all positions, restricted to keys below below[h] (UINT64_MAX: all).
// Called by every thread of the block; 8 passes of 8 bits, MSB first.
__device__ uint64_t KthLargestKey(const AdaParams& p, int h_lo, int h_hi, const uint64_t* below,
                                  int64_t k, RadixShared& sh) {
  if (threadIdx.x == 0) {
    sh.prefix = 0;
    sh.mask = 0;
    sh.rem = k;
  }
  __syncthreads();
  const int count = (h_hi - h_lo) * p.past;  // < 2^31: checked by RunKvSelect
  for (int shift = 56; shift >= 0; shift -= 8) {
    for (int b = threadIdx.x; b < 256; b += blockDim.x) sh.hist[b] = 0;
    __syncthreads();
    const uint64_t prefix = sh.prefix, mask = sh.mask;
    for (int base = 0; base < count; base += blockDim.x) {  // whole warps for WarpHistAdd
      const int i = base + threadIdx.x;
      bool in = false;
      uint64_t key = 0;
      if (i < count) {
        const int h = h_lo + i / p.past, j = i % p.past;
        key = AdaKey(p, h, j);
        in = key < below[h] && (key & mask) == prefix;
      }
      WarpHistAdd(sh.hist, static_cast<int>((key >> shift) & 255), in);
    }
    __syncthreads();
    if (threadIdx.x < 32) WarpPickBin<int64_t>(sh.hist, sh.rem, &sh.bin, &sh.rem);
    __syncthreads();
    if (threadIdx.x == 0) {
      sh.prefix = prefix | (static_cast<uint64_t>(sh.bin) << shift);
      sh.mask = mask | (static_cast<uint64_t>(255) << shift);
    }
    __syncthreads();
  }
  const uint64_t key = sh.prefix;
  __syncthreads();  // The next call resets `sh`.
  return key;
}

__global__ void __launch_bounds__(kSelectThreads) AdaKvSplitKernel(AdaParams p) {
  __shared__ RadixShared sh;
  __shared__ uint64_t floor_key[kMaxAdaptiveHeads];  // keys >= it: the head's top-floor
  __shared__ uint64_t all_below[kMaxAdaptiveHeads];
  __shared__ int extra[kMaxAdaptiveHeads];
  const int H = p.num_heads, f = p.floor_cap;
  for (int h = threadIdx.x; h < H; h += blockDim.x) {
    floor_key[h] = f == 0 ? ~0ull : 0ull;  // f == past: nothing is left below the floor.
    all_below[h] = ~0ull;
    extra[h] = 0;
  }
  __syncthreads();
  if (f > 0 && f < p.past) {
    for (int h = 0; h < H; ++h) {
      const uint64_t key = KthLargestKey(p, h, h + 1, all_below, f, sh);
      if (threadIdx.x == 0) floor_key[h] = key;
    }
  }
  __syncthreads();
  const int64_t rest = p.total - static_cast<int64_t>(H) * f;
  if (rest > 0) {
    const uint64_t t = KthLargestKey(p, 0, H, floor_key, rest, sh);
    const int count = H * p.past;
    for (int i = threadIdx.x; i < count; i += blockDim.x) {
      const int h = i / p.past, j = i % p.past;
      const uint64_t key = AdaKey(p, h, j);
      if (key < floor_key[h] && key >= t) atomicAdd(&extra[h], 1);
    }
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    const int bs_mask = (1 << p.block_shift) - 1;
    p.indptr[0] = 0;
    for (int h = 0; h < H; ++h) {
      const int cap = f + extra[h];
      p.caps[h] = cap;
      p.indptr[h + 1] = p.indptr[h] + ((cap + p.w + bs_mask) >> p.block_shift);
    }
  }
}

struct ScatterParams {
  const void* k;
  const void* v;
  int64_t kv_stride;
  const int32_t* kept_count;
  const int32_t* kept_index;
  const int32_t* indptr;
  const int32_t* indices;
  int32_t first_row, n, block_shift;
  int32_t dest_limit;  // blocks of `indices` that may be written
  void* k_pool;
  void* v_pool;
  int64_t block_stride;
};

template <typename T, int kHeadDim>
__global__ void ScatterKernel(ScatterParams p) {
  constexpr int kChunks = kHeadDim / 8;
  const int kvh = blockIdx.y;
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int i = static_cast<int>(idx / kChunks), c = static_cast<int>(idx % kChunks) * 8;
  if (i >= p.kept_count[kvh]) return;
  const int j = p.kept_index[static_cast<int64_t>(kvh) * p.n + i];
  const int64_t src = j * p.kv_stride + static_cast<int64_t>(kvh) * kHeadDim + c;
  const int row = p.first_row + kvh;
  const int block = p.indptr[row] + (i >> p.block_shift);
  if (block >= p.dest_limit) return;
  const int64_t dst = static_cast<int64_t>(p.indices[block]) * p.block_stride +
                      (i & ((1 << p.block_shift) - 1)) * kHeadDim + c;
  *reinterpret_cast<uint4*>(static_cast<T*>(p.k_pool) + dst) =
      LoadNc16(static_cast<const T*>(p.k) + src);
  *reinterpret_cast<uint4*>(static_cast<T*>(p.v_pool) + dst) =
      LoadNc16(static_cast<const T*>(p.v) + src);
}

// In place: moves kept token i of head blockIdx.x from slot kept_index[i] to slot i of its row.
template <typename T, int kHeadDim>
__global__ void __launch_bounds__(kSelectThreads) CompactKernel(ScatterParams p) {
  constexpr int kChunks = kHeadDim / 8;
  constexpr int kTile = kSelectThreads / kChunks;  // tokens per tile
  const int kvh = blockIdx.x, row = p.first_row + kvh, count = p.kept_count[kvh];
  const int32_t* kept = p.kept_index + static_cast<int64_t>(kvh) * p.n;
  const int t = threadIdx.x / kChunks, c = (threadIdx.x % kChunks) * 8;
  T* kp = static_cast<T*>(p.k_pool);
  T* vp = static_cast<T*>(p.v_pool);
  for (int base = 0; base < count; base += kTile) {
    const int i = base + t;
    const int j = i < count ? kept[i] : i;
    uint4 kv = {}, vv = {};
    int64_t dst = 0;
    if (j != i) {  // Plain loads: these rows are written by this kernel.
      const int64_t src =
          PagedOffset<T>(p.indptr, p.indices, row, j, p.block_shift, p.block_stride, kHeadDim) + c;
      dst =
          PagedOffset<T>(p.indptr, p.indices, row, i, p.block_shift, p.block_stride, kHeadDim) + c;
      kv = *reinterpret_cast<const uint4*>(kp + src);
      vv = *reinterpret_cast<const uint4*>(vp + src);
    }
    __syncthreads();
    if (j != i) {
      *reinterpret_cast<uint4*>(kp + dst) = kv;
      *reinterpret_cast<uint4*>(vp + dst) = vv;
    }
    __syncthreads();
  }
}

template <typename T, int kHeadDim, int kNq>
cudaError_t LaunchScores(const Params& p, int hkv, cudaStream_t stream) {
  const size_t smem = static_cast<size_t>(kNq) * kHeadDim * sizeof(float);
  WindowStatsKernel<T, kHeadDim, kNq><<<dim3(p.chunks, hkv), kStatThreads, smem, stream>>>(p);
  WindowLseKernel<<<hkv, 256, 0, stream>>>(p);
  if (p.past > 0) {
    WindowScoreKernel<T, kHeadDim, kNq>
        <<<dim3((p.past + kStatThreads - 1) / kStatThreads, hkv), kStatThreads, smem, stream>>>(p);
  }
  return cudaGetLastError();
}

}  // namespace

size_t KvSelectWorkspaceBytes(int32_t n, int32_t window, int32_t num_q_heads,
                              int32_t num_kv_heads) {
  const int32_t w = std::min(window, n);
  const int32_t group = num_kv_heads > 0 ? num_q_heads / num_kv_heads : 0;
  return static_cast<size_t>(Layout(n, w, w * group, num_kv_heads).total);
}

cudaError_t RunKvSelect(const KvSelectArgs& a, cudaStream_t stream) {
  if (a.num_kv_heads < 1 || a.num_q_heads % a.num_kv_heads != 0 || a.n < 1 || a.window < 1 ||
      (a.head_dim != 64 && a.head_dim != 128) || a.pool_kernel < 1 || a.block_size < 1 ||
      (a.block_size & (a.block_size - 1)) != 0 || a.workspace == nullptr ||
      a.kept_count == nullptr || a.kept_index == nullptr ||
      (a.adaptive_total < 0 && a.caps == nullptr) ||
      (a.in_place && (a.dest_indptr == nullptr || a.dest_indices == nullptr)) ||
      // 16-byte loads of the window queries and the keys.
      a.q_stride % 8 != 0 || reinterpret_cast<uintptr_t>(a.q_window) % 16 != 0 ||
      (!a.in_place && (a.kv_stride % 8 != 0 || reinterpret_cast<uintptr_t>(a.keys) % 16 != 0))) {
    return cudaErrorInvalidValue;
  }
  const int32_t w = std::min(a.window, a.n);
  const int32_t group = a.num_q_heads / a.num_kv_heads;
  const int32_t nq = w * group;
  if (nq > 64) return cudaErrorInvalidValue;
  const bool adaptive = a.adaptive_total >= 0;
  const int64_t past_all = static_cast<int64_t>(a.num_kv_heads) * (a.n - w);
  if (adaptive ? (a.caps_out == nullptr || a.num_kv_heads > kMaxAdaptiveHeads ||
                  past_all >= (int64_t{1} << 31) || a.adaptive_floor < 0 ||
                  a.adaptive_floor > a.n - w || a.adaptive_total > past_all ||
                  static_cast<int64_t>(a.adaptive_floor) * a.num_kv_heads > a.adaptive_total)
               : a.caps == nullptr) {
    return cudaErrorInvalidValue;
  }
  const Layout L(a.n, w, nq, a.num_kv_heads);
  char* ws = static_cast<char*>(a.workspace);
  Params p{};
  p.q = a.q_window;
  p.k = a.keys;
  p.q_stride = a.q_stride;
  p.kv_stride = a.kv_stride;
  p.n = a.n;
  p.w = w;
  p.past = a.n - w;
  p.group = group;
  p.nq = nq;
  p.num_q_heads = a.num_q_heads;
  p.chunks = (a.n + kKeysPerCta - 1) / kKeysPerCta;
  p.scale_log2 = a.scale * kLog2e;
  p.stats = reinterpret_cast<float2*>(ws + L.stats);
  p.lse = reinterpret_cast<float*>(ws + L.lse);
  p.raw = reinterpret_cast<float*>(ws + L.raw);
  p.paged = a.in_place;
  p.indptr = a.dest_indptr;
  p.indices = a.dest_indices;
  p.first_row = a.dest_first_row;
  p.block_shift = __builtin_ctz(static_cast<unsigned>(a.block_size));
  p.block_stride = a.block_stride;
  if (a.in_place) p.k = a.k_pool;
  cudaError_t err = DispatchDType(a.dtype, [&](auto t) {
    using T = decltype(t);
    return DispatchHeadDim(a.head_dim, [&](auto hd) {
      constexpr int D = decltype(hd)::value;
      if (p.past == 0) return cudaSuccess;
      return nq <= 32 ? LaunchScores<T, D, 32>(p, a.num_kv_heads, stream)
                      : LaunchScores<T, D, 64>(p, a.num_kv_heads, stream);
    });
  });
  if (err != cudaSuccess) return err;
  SelectParams sp{};
  sp.raw = p.raw;
  sp.pooled = reinterpret_cast<float*>(ws + L.pooled);
  sp.scores_out = a.scores;
  sp.caps = adaptive ? a.caps_out : a.caps;
  sp.kept_count = a.kept_count;
  sp.kept_index = a.kept_index;
  sp.n = a.n;
  sp.w = w;
  sp.past = p.past;
  sp.pool_kernel = a.pool_kernel;
  const int block_shift = __builtin_ctz(static_cast<unsigned>(a.block_size));
  int32_t* ada_indptr = reinterpret_cast<int32_t*>(ws + L.ada_indptr);
  if (adaptive) {
    if (p.past > 0) {
      PoolKernel<<<dim3((p.past + 255) / 256, a.num_kv_heads), 256, 0, stream>>>(sp);
      sp.pooled_ready = true;
    }
    AdaParams ap{};
    ap.pooled = sp.pooled;
    ap.num_heads = a.num_kv_heads;
    ap.past = p.past;
    ap.floor_cap = a.adaptive_floor;
    ap.w = w;
    ap.block_shift = block_shift;
    ap.total = a.adaptive_total;
    ap.caps = a.caps_out;
    ap.indptr = ada_indptr;
    AdaKvSplitKernel<<<1, kSelectThreads, 0, stream>>>(ap);
  }
  SelectKernel<<<a.num_kv_heads, kSelectThreads, 0, stream>>>(sp);
  if ((err = cudaGetLastError()) != cudaSuccess) return err;
  ScatterParams cp{};
  cp.k = a.keys;
  cp.v = a.values;
  cp.kv_stride = a.kv_stride;
  cp.kept_count = a.kept_count;
  cp.kept_index = a.kept_index;
  // In place, an adaptive selection compacts each head within its own row like a static one;
  // only a one-step adaptive selection packs the heads into the layer's reservation.
  const bool packed = adaptive && !a.in_place;
  cp.indptr = packed ? ada_indptr : a.dest_indptr;
  cp.indices = a.dest_indices;
  cp.first_row = packed ? 0 : a.dest_first_row;
  cp.dest_limit = packed ? a.dest_capacity : INT32_MAX;
  cp.n = a.n;
  cp.block_shift = block_shift;
  cp.k_pool = a.k_pool;
  cp.v_pool = a.v_pool;
  cp.block_stride = a.block_stride;
  if (a.in_place) {
    return DispatchDType(a.dtype, [&](auto t) {
      using T = decltype(t);
      return DispatchHeadDim(a.head_dim, [&](auto hd) {
        CompactKernel<T, decltype(hd)::value><<<a.num_kv_heads, kSelectThreads, 0, stream>>>(cp);
        return cudaGetLastError();
      });
    });
  }
  const int64_t threads = static_cast<int64_t>(a.n) * (a.head_dim / 8);
  const dim3 grid(static_cast<unsigned>((threads + 255) / 256), a.num_kv_heads);
  return DispatchDType(a.dtype, [&](auto t) {
    using T = decltype(t);
    return DispatchHeadDim(a.head_dim, [&](auto hd) {
      ScatterKernel<T, decltype(hd)::value><<<grid, 256, 0, stream>>>(cp);
      return cudaGetLastError();
    });
  });
}

}  // namespace hkv::kernels
