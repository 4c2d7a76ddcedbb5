// Causal GQA prefill attention for Hopper (sm_90a); see prefill_attention_sm90.h.
//
// NOTE(kernels): FlashAttention-3's structure. A CTA of
// 3 warpgroups owns 128 queries of one query head:
//   warpgroup 0 (producer, 40 registers): one thread issues TMA loads of the Q tile and of
//     each dense K/V tile (128 keys, 128-byte swizzle) into a 2-stage ring. Paged-prefix tiles
//     wholly inside the prefix come by TMA too, one box per page; the partial last one (and
//     every prefix tile under kWgmmaSerial) is gathered by all 128 producer threads with
//     cp.async into the same swizzled layout, zero-filling past the prefix (the pool's rows
//     there may hold anything).
//   warpgroups 1, 2 (consumers, 232 registers): 64 query rows each. Per key tile: S = Q K^T
//     by wgmma from shared memory (both K-major), online softmax in fp32 on the accumulator
//     registers (log2 domain), then O += P V by wgmma with P from registers and V read
//     transposed (MN-major) from shared memory. The default (pipelined) schedule overlaps S of
//     tile t with P V of tile t-1 and alternates the two warpgroups' MMAs (ping-pong);
//     PrefillKernel::kWgmmaSerial runs S, softmax, P V one after the other.
//   mbarriers: k_full / v_full per stage (TMA transaction bytes, or one arrive after the
//   gather), k_empty / v_empty per stage (256 consumer arrivals: K is released as soon as S
//   is done, V after P V), q_full once.
// Key tiles: first the prefix tiles (positions 0..P-1, masked only past P), then the chunk's
// dense tiles; with 128-row query tiles and 128-key tiles only the last dense tile crosses the
// diagonal, so it alone is masked. Output goes from registers straight to global memory.

#include <cuda.h>

#include <mutex>
#include <type_traits>

#include "kernels/cuda_common.cuh"
#include "kernels/prefill_attention_sm90.h"
#include "kernels/wgmma_sm90.cuh"

namespace hkv::kernels {
namespace {

constexpr int kBM = 128;  // queries per CTA (2 consumer warpgroups x 64)
constexpr int kBN = 128;  // keys per tile
constexpr int kStages = 2;
constexpr int kThreads = 384;

struct Sm90Args {
  void* out;
  int64_t out_stride;
  const int32_t* cu_seqlens;
  int32_t group;
  float scale_log2;
  // Paged prefix; indptr == nullptr when absent.
  const int32_t* indptr;
  const int32_t* indices;
  const int32_t* last_len;
  int32_t row_seq_stride, row_offset;
  const void* k_pool;
  const void* v_pool;
  int64_t block_stride;
  int32_t block_shift;
  // Prefix tiles wholly inside the prefix come by TMA, one box per page (tm_kp / tm_vp);
  // else (and always for the partial last one) by the cp.async gather.
  int32_t page_tma;
  // With page_tma: whole prefix tiles whose pages have consecutive block ids come as one box
  // of the tile's rows per half (tm_kr / tm_vr).
  int32_t run_tma;
  int32_t last_tile_only;  // PrefillAttentionArgs::last_tile_only
};

// Shared memory plan (bytes from a 1024-aligned base).
template <int D>
struct Smem {
  static constexpr int kQBytes = kBM * D * 2;
  static constexpr int kTileBytes = kBN * D * 2;  // one K or V tile
  static constexpr int kQ = 0;
  static constexpr int kK = kQ + kQBytes;               // + stage * kTileBytes
  static constexpr int kV = kK + kStages * kTileBytes;  // + stage * kTileBytes
  static constexpr int kBars = kV + kStages * kTileBytes;
  static constexpr int kTotal = kBars + 128 + 1024;  // 9 barriers, alignment slack
};

#if defined(HKV_SM90_DEVICE)

template <typename T>
__device__ __forceinline__ uint32_t PackPair(float lo, float hi) {
  T a = FromFloat<T>(lo), b = FromFloat<T>(hi);
  return static_cast<uint32_t>(*reinterpret_cast<uint16_t*>(&a)) |
         (static_cast<uint32_t>(*reinterpret_cast<uint16_t*>(&b)) << 16);
}

template <typename T>
__device__ __forceinline__ void MmaQK(float* s, uint64_t da, uint64_t db, int scale_d) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    sm90::WgmmaSS_N128_Bf16(s, da, db, scale_d);
  } else {
    sm90::WgmmaSS_N128_F16(s, da, db, scale_d);
  }
}

template <typename T, int D>
__device__ __forceinline__ void MmaPV(float* o, const uint32_t* pa, uint64_t db) {
  if constexpr (D == 128) {
    if constexpr (std::is_same_v<T, __nv_bfloat16>) {
      sm90::WgmmaRS_N128_TransB_Bf16(o, pa, db);
    } else {
      sm90::WgmmaRS_N128_TransB_F16(o, pa, db);
    }
  } else {
    if constexpr (std::is_same_v<T, __nv_bfloat16>) {
      sm90::WgmmaRS_N64_TransB_Bf16(o, pa, db);
    } else {
      sm90::WgmmaRS_N64_TransB_F16(o, pa, db);
    }
  }
}

#endif  // HKV_SM90_DEVICE

// Consumer state and steps of one warpgroup (64 query rows); see the NOTE at the top.
template <typename T, int D>
struct Consumer {
  static constexpr int kNo = D / 2;  // O accumulators per thread
  float o[kNo];
  float s[64];               // S (then P in fp32) of one 64 x 128 tile
  uint32_t pa[kBN / 16][4];  // P as A-fragments, one per 16 keys
  float m[2], l[2];          // running max (scaled log2 domain), partial row sums
  int row0, tig;             // tile rows row0 (rr = 0) and row0 + 8 (rr = 1); column pair
  uint32_t sq;               // this warpgroup's 64 rows of the Q tile

#if defined(HKV_SM90_DEVICE)
  // Issues S = Q K^T of the tile in stage `sk` (one commit group).
  __device__ __forceinline__ void IssueQK(uint32_t sk) {
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      const uint32_t koff = (kk % 4) * 32;  // 16 columns within the 64-column half
      const uint64_t da = sm90::Desc128B(sq + (kk / 4) * kBM * 128 + koff, 16, 1024);
      const uint64_t db = sm90::Desc128B(sk + (kk / 4) * kBN * 128 + koff, 16, 1024);
      MmaQK<T>(s, da, db, kk > 0 ? 1 : 0);
    }
    sm90::WgmmaCommit();
  }
  // Issues O += P V of the tile in stage `sv` (one commit group).
  __device__ __forceinline__ void IssuePV(uint32_t sv) {
#pragma unroll
    for (int kk = 0; kk < kBN / 16; ++kk) {
      // 16 keys of V: rows 16 kk .., both 64-column halves (lbo = one half).
      MmaPV<T, D>(o, pa[kk], sm90::Desc128B(sv + kk * 16 * 128, kBN * 128, 1024));
    }
    sm90::WgmmaCommit();
  }
  // Masks S (key columns >= limit, or past the diagonal when `diagonal`), then the online
  // softmax: s becomes P, l is rescaled and accumulated; returns O's rescale in corr.
  __device__ __forceinline__ void Softmax(int limit, bool diagonal, float scale_log2, float* corr) {
    if (limit < kBN) {
#pragma unroll
      for (int j = 0; j < 16; ++j) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          if (j * 8 + tig * 2 + (e & 1) >= limit) s[j * 4 + e] = -INFINITY;
        }
      }
    }
    if (diagonal) {
#pragma unroll
      for (int j = 0; j < 16; ++j) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          if (j * 8 + tig * 2 + (e & 1) > row0 + (e >> 1) * 8) s[j * 4 + e] = -INFINITY;
        }
      }
    }
    float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int j = 0; j < 16; ++j) {
      mx[0] = fmaxf(mx[0], fmaxf(s[j * 4], s[j * 4 + 1]));
      mx[1] = fmaxf(mx[1], fmaxf(s[j * 4 + 2], s[j * 4 + 3]));
    }
#pragma unroll
    for (int rr = 0; rr < 2; ++rr) {  // a row lives in the 4 threads of a quad
      mx[rr] = fmaxf(mx[rr], __shfl_xor_sync(0xffffffffu, mx[rr], 1));
      mx[rr] = fmaxf(mx[rr], __shfl_xor_sync(0xffffffffu, mx[rr], 2));
      const float mn = fmaxf(m[rr], mx[rr] * scale_log2);
      corr[rr] = FastExp2(m[rr] - mn);
      m[rr] = mn;
      l[rr] *= corr[rr];
    }
#pragma unroll
    for (int j = 0; j < 16; ++j) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        s[j * 4 + e] = FastExp2(fmaf(s[j * 4 + e], scale_log2, -m[e >> 1]));
        l[e >> 1] += s[j * 4 + e];
      }
    }
  }
  __device__ __forceinline__ void PackP() {
#pragma unroll
    for (int kk = 0; kk < kBN / 16; ++kk) {
      pa[kk][0] = PackPair<T>(s[8 * kk + 0], s[8 * kk + 1]);
      pa[kk][1] = PackPair<T>(s[8 * kk + 2], s[8 * kk + 3]);
      pa[kk][2] = PackPair<T>(s[8 * kk + 4], s[8 * kk + 5]);
      pa[kk][3] = PackPair<T>(s[8 * kk + 6], s[8 * kk + 7]);
    }
  }
  __device__ __forceinline__ void RescaleO(const float* corr) {
#pragma unroll
    for (int n = 0; n < D / 8; ++n) {
      o[4 * n + 0] *= corr[0];
      o[4 * n + 1] *= corr[0];
      o[4 * n + 2] *= corr[1];
      o[4 * n + 3] *= corr[1];
    }
  }
#endif  // HKV_SM90_DEVICE
};

// kPipelined: FlashAttention-3's intra-warpgroup overlap (S of tile t is computed while P V of
// tile t-1 runs) and inter-warpgroup ping-pong (named barriers 2 and 3 make the two consumer
// warpgroups take turns issuing their MMAs, so one's softmax hides behind the other's MMAs).
// Without it each tile is S, softmax, P V in turn (the simpler reference schedule).
template <typename T, int D, bool kPipelined>
__global__ void __launch_bounds__(kThreads, 1)
    PrefillAttentionSm90Kernel(const __grid_constant__ CUtensorMap tm_q,
                               const __grid_constant__ CUtensorMap tm_k,
                               const __grid_constant__ CUtensorMap tm_v,
                               const __grid_constant__ CUtensorMap tm_kp,
                               const __grid_constant__ CUtensorMap tm_vp,
                               const __grid_constant__ CUtensorMap tm_kr,
                               const __grid_constant__ CUtensorMap tm_vr, const Sm90Args a) {
#if defined(HKV_SM90_DEVICE)
  using L = Smem<D>;
  constexpr int kProducerRegs = 40;  // 128 x 40 + 256 x 232 <= 64K registers
  constexpr int kConsumerRegs = 232;
  constexpr int kHalves = D / 64;  // 64-column halves of a row
  constexpr int kChunks = D / 8;   // 16-byte chunks of a row
  extern __shared__ unsigned char smem_raw[];
  const uint32_t base = (sm90::SmemAddr(smem_raw) + 1023u) & ~1023u;
  // mbarriers, 8 bytes each; the per-stage ones at + 8 * stage.
  const uint32_t q_full = base + L::kBars;
  const uint32_t k_full = q_full + 8;
  const uint32_t v_full = k_full + 8 * kStages;
  const uint32_t k_empty = v_full + 8 * kStages;
  const uint32_t v_empty = k_empty + 8 * kStages;

  const int seq = blockIdx.z, h = blockIdx.y;
  const int q_begin = a.cu_seqlens[seq];
  const int nq = a.cu_seqlens[seq + 1] - q_begin;
  // Heaviest (longest causal span) tiles first; last_tile_only: the tile of the last row.
  const int tile_q =
      a.last_tile_only ? max(nq - 1, 0) / kBM * kBM : (gridDim.x - 1 - blockIdx.x) * kBM;
  if (tile_q >= nq) return;  // uniform over the CTA, before any barrier
  const int kvh = h / a.group;
  int prefix = 0;
  const int32_t* blocks = nullptr;
  if (a.indptr != nullptr) {
    const int row = seq * a.row_seq_stride + a.row_offset + kvh;
    const int nb = a.indptr[row + 1] - a.indptr[row];
    prefix = nb <= 0 ? 0 : ((nb - 1) << a.block_shift) + a.last_len[row];
    blocks = a.indices + a.indptr[row];
  }
  const int prefix_tiles = (prefix + kBN - 1) / kBN;
  const int num_tiles = prefix_tiles + tile_q / kBN + 1;  // dense tiles: 0 .. diagonal

  if (threadIdx.x == 0) {
    sm90::BarInit(q_full, 1);
    for (int s = 0; s < kStages; ++s) {
      sm90::BarInit(k_full + 8 * s, 1);
      sm90::BarInit(v_full + 8 * s, 1);
      sm90::BarInit(k_empty + 8 * s, 2 * 128);
      sm90::BarInit(v_empty + 8 * s, 2 * 128);
    }
    sm90::BarInitFence();
  }
  __syncthreads();

  const int wg = threadIdx.x / 128;
  if (wg == 0) {
    // ---------------------------------------------------------------- producer
    sm90::RegDealloc<kProducerRegs>();
    const int pt = threadIdx.x;
    if (pt == 0) {
      sm90::BarArriveExpectTx(q_full, L::kQBytes);
#pragma unroll
      for (int hf = 0; hf < kHalves; ++hf) {
        sm90::TmaLoad2d(base + L::kQ + hf * kBM * 128, &tm_q, h * D + hf * 64, q_begin + tile_q,
                        q_full);
      }
    }
    const T* kp = static_cast<const T*>(a.k_pool);
    const T* vp = static_cast<const T*>(a.v_pool);
    const int bmask = (1 << a.block_shift) - 1;
    // Thread 0 alone waits on the empty barriers and issues every TMA load; threads 1..127 only
    // help gather (cp.async) prefix tiles, which come first, and learn that a gathered tile's
    // stage is free from thread 0 through named barrier 1. Invariant: only a thread that walks
    // every tile in order waits on an mbarrier parity, so a wait is never more than one phase
    // behind. (A helper that waited on the empty barriers of TMA-loaded tiles could fall two
    // phases behind while thread 0 and the consumers ran on, see the parity it waits for
    // again, and never leave: the CTA, and the kernel, would hang.)
    const int my_tiles = pt == 0 ? num_tiles : prefix_tiles;
    for (int t = 0; t < my_tiles; ++t) {
      const int stage = t % kStages;
      const uint32_t phase = (t / kStages) & 1;
      const uint32_t sk = base + L::kK + stage * L::kTileBytes;
      const uint32_t sv = base + L::kV + stage * L::kTileBytes;
      const bool by_pages = a.page_tma != 0 && (t + 1) * kBN <= prefix;
      const bool gathered = !by_pages && t < prefix_tiles;
      if (pt != 0 && !gathered) continue;
      if (pt == 0) sm90::BarWait(k_empty + 8 * stage, phase ^ 1);
      if (by_pages) {  // a whole prefix tile: one TMA box per page and half (thread 0)
        const int pages = kBN >> a.block_shift, page_bytes = 128 << a.block_shift;
        const int32_t* tile_blocks = blocks + ((t * kBN) >> a.block_shift);
        // Pages with consecutive block ids are consecutive rows of the pool: one box of the
        // tile's kBN rows per half (tm_kr / tm_vr), not one per page and half.
        const int32_t first = tile_blocks[0];
        bool run = a.run_tma != 0;
        for (int j = 1; j < pages && run; ++j) run = tile_blocks[j] == first + j;
        sm90::BarArriveExpectTx(k_full + 8 * stage, L::kTileBytes);
        for (int j = 0; j < (run ? 1 : pages); ++j) {
          const int32_t b = tile_blocks[j];
#pragma unroll
          for (int hf = 0; hf < kHalves; ++hf) {
            if (run) {
              sm90::TmaLoad2d(sk + hf * kBN * 128, &tm_kr, hf * 64, first << a.block_shift,
                              k_full + 8 * stage);
            } else {
              sm90::TmaLoad3d(sk + hf * kBN * 128 + j * page_bytes, &tm_kp, hf * 64, 0, b,
                              k_full + 8 * stage);
            }
          }
        }
        sm90::BarWait(v_empty + 8 * stage, phase ^ 1);
        sm90::BarArriveExpectTx(v_full + 8 * stage, L::kTileBytes);
        for (int j = 0; j < (run ? 1 : pages); ++j) {
          const int32_t b = tile_blocks[j];
#pragma unroll
          for (int hf = 0; hf < kHalves; ++hf) {
            if (run) {
              sm90::TmaLoad2d(sv + hf * kBN * 128, &tm_vr, hf * 64, first << a.block_shift,
                              v_full + 8 * stage);
            } else {
              sm90::TmaLoad3d(sv + hf * kBN * 128 + j * page_bytes, &tm_vp, hf * 64, 0, b,
                              v_full + 8 * stage);
            }
          }
        }
      } else if (gathered) {
        if (pt == 0) sm90::BarWait(v_empty + 8 * stage, phase ^ 1);
        sm90::NamedBarrierSyncDivergent(1, 128);  // thread 0 saw the stage's K and V free
        for (int c = pt; c < kBN * kChunks; c += 128) {
          const int key = c / kChunks, ch = c % kChunks, p = t * kBN + key;
          const bool valid = p < prefix;
          int64_t off = 0;
          if (valid) {
            off = static_cast<int64_t>(blocks[p >> a.block_shift]) * a.block_stride +
                  (p & bmask) * D + ch * 8;
          }
          const uint32_t dst = (ch / 8) * kBN * 128 + key * 128 + (((ch % 8) ^ (key & 7)) << 4);
          sm90::CpAsync16(sk + dst, kp + off, valid);
          sm90::CpAsync16(sv + dst, vp + off, valid);
        }
        sm90::CpAsyncWaitAll();
        sm90::FenceProxyAsync();
        sm90::NamedBarrierSyncDivergent(1, 128);
        if (pt == 0) {
          sm90::BarArrive(k_full + 8 * stage);
          sm90::BarArrive(v_full + 8 * stage);
        }
      } else {  // pt == 0
        const int row = q_begin + (t - prefix_tiles) * kBN;
        sm90::BarArriveExpectTx(k_full + 8 * stage, L::kTileBytes);
#pragma unroll
        for (int hf = 0; hf < kHalves; ++hf) {
          sm90::TmaLoad2d(sk + hf * kBN * 128, &tm_k, kvh * D + hf * 64, row, k_full + 8 * stage);
        }
        sm90::BarWait(v_empty + 8 * stage, phase ^ 1);
        sm90::BarArriveExpectTx(v_full + 8 * stage, L::kTileBytes);
#pragma unroll
        for (int hf = 0; hf < kHalves; ++hf) {
          sm90::TmaLoad2d(sv + hf * kBN * 128, &tm_v, kvh * D + hf * 64, row, v_full + 8 * stage);
        }
      }
    }
    return;
  }

  // ------------------------------------------------------------------ consumers
  sm90::RegAlloc<kConsumerRegs>();
  const int cw = wg - 1;                  // consumer warpgroup: query rows 64 cw .. 64 cw + 63
  const int ct = threadIdx.x - 128 * wg;  // thread within the warpgroup
  const int warp = ct / 32, lane = ct % 32;
  Consumer<T, D> c;
  c.row0 = cw * 64 + warp * 16 + lane / 4;
  c.tig = lane % 4;
  c.sq = base + L::kQ + cw * 64 * 128;
  c.m[0] = c.m[1] = -1e30f;
  c.l[0] = c.l[1] = 0.0f;
#pragma unroll
  for (int i = 0; i < Consumer<T, D>::kNo; ++i) c.o[i] = 0.0f;
#pragma unroll
  for (int i = 0; i < 64; ++i) c.s[i] = 0.0f;
  auto stage_k = [&](int t) { return base + L::kK + (t % kStages) * L::kTileBytes; };
  auto stage_v = [&](int t) { return base + L::kV + (t % kStages) * L::kTileBytes; };
  auto parity = [&](int t) { return static_cast<uint32_t>((t / kStages) & 1); };
  // Key columns of tile t that exist (the prefix's last tile is partial) / diagonal tile.
  auto limit = [&](int t) { return t == prefix_tiles - 1 ? prefix - t * kBN : kBN; };
  float corr[2];

  sm90::BarWait(q_full, 0);
  if constexpr (!kPipelined) {
    for (int t = 0; t < num_tiles; ++t) {
      sm90::BarWait(k_full + 8 * (t % kStages), parity(t));
      sm90::FenceRegs<64>(c.s);
      sm90::WgmmaFence();
      c.IssueQK(stage_k(t));
      sm90::WgmmaWait<0>();
      sm90::FenceRegs<64>(c.s);
      sm90::BarArrive(k_empty + 8 * (t % kStages));
      c.Softmax(limit(t), t == num_tiles - 1, a.scale_log2, corr);
      c.PackP();
      c.RescaleO(corr);
      sm90::BarWait(v_full + 8 * (t % kStages), parity(t));
      sm90::FenceRegs<Consumer<T, D>::kNo>(c.o);
      sm90::WgmmaFence();
      c.IssuePV(stage_v(t));
      sm90::WgmmaWait<0>();
      sm90::FenceRegs<Consumer<T, D>::kNo>(c.o);
      sm90::BarArrive(v_empty + 8 * (t % kStages));
    }
  } else {
    const int my_bar = 2 + cw, other_bar = 3 - cw;
    if (cw == 1) sm90::NamedBarrierArrive(other_bar, 256);  // warpgroup 0 goes first
    // Tile 0: S, softmax, P (O is zero, its rescale is moot).
    sm90::BarWait(k_full, parity(0));
    sm90::FenceRegs<64>(c.s);
    sm90::WgmmaFence();
    c.IssueQK(stage_k(0));
    sm90::WgmmaWait<0>();
    sm90::FenceRegs<64>(c.s);
    sm90::BarArrive(k_empty);
    c.Softmax(limit(0), num_tiles == 1, a.scale_log2, corr);
    c.PackP();
    for (int t = 1; t < num_tiles; ++t) {
      sm90::BarWait(k_full + 8 * (t % kStages), parity(t));
      sm90::BarWait(v_full + 8 * ((t - 1) % kStages), parity(t - 1));
      sm90::NamedBarrierSync(my_bar, 256);
      sm90::FenceRegs<64>(c.s);
      sm90::FenceRegs<Consumer<T, D>::kNo>(c.o);
      sm90::WgmmaFence();
      c.IssueQK(stage_k(t));      // S(t) ...
      c.IssuePV(stage_v(t - 1));  // ... and O += P(t-1) V(t-1) behind it
      sm90::NamedBarrierArrive(other_bar, 256);
      sm90::WgmmaWait<1>();  // S(t) done
      sm90::FenceRegs<64>(c.s);
      sm90::BarArrive(k_empty + 8 * (t % kStages));
      c.Softmax(limit(t), t == num_tiles - 1, a.scale_log2, corr);
      sm90::WgmmaWait<0>();  // P(t-1) V(t-1) done: pa and the V stage are free
      sm90::FenceRegs<Consumer<T, D>::kNo>(c.o);
      sm90::BarArrive(v_empty + 8 * ((t - 1) % kStages));
      c.RescaleO(corr);
      c.PackP();
    }
    const int last = num_tiles - 1;
    sm90::BarWait(v_full + 8 * (last % kStages), parity(last));
    sm90::FenceRegs<Consumer<T, D>::kNo>(c.o);
    sm90::WgmmaFence();
    c.IssuePV(stage_v(last));
    sm90::WgmmaWait<0>();
    sm90::FenceRegs<Consumer<T, D>::kNo>(c.o);
    sm90::BarArrive(v_empty + 8 * (last % kStages));
    if (cw == 0) sm90::NamedBarrierSync(my_bar, 256);  // matches warpgroup 1's last arrive
  }

  T* out = static_cast<T*>(a.out) + static_cast<int64_t>(h) * D + c.tig * 2;
#pragma unroll
  for (int rr = 0; rr < 2; ++rr) {
    float sum = c.l[rr];
    sum += __shfl_xor_sync(0xffffffffu, sum, 1);
    sum += __shfl_xor_sync(0xffffffffu, sum, 2);
    const int row = tile_q + c.row0 + rr * 8;
    if (row >= nq) continue;
    const float inv = sum > 0.0f ? 1.0f / sum : 0.0f;
    T* orow = out + static_cast<int64_t>(q_begin + row) * a.out_stride;
#pragma unroll
    for (int n = 0; n < D / 8; ++n) {
      *reinterpret_cast<uint32_t*>(orow + n * 8) =
          PackPair<T>(c.o[4 * n + rr * 2] * inv, c.o[4 * n + rr * 2 + 1] * inv);
    }
  }
#endif  // HKV_SM90_DEVICE
}

// cuTensorMapEncodeTiled through the runtime's driver entry point (no -lcuda).
using EncodeTiledFn = CUresult (*)(CUtensorMap*, CUtensorMapDataType, cuuint32_t, void*,
                                   const cuuint64_t*, const cuuint64_t*, const cuuint32_t*,
                                   const cuuint32_t*, CUtensorMapInterleave, CUtensorMapSwizzle,
                                   CUtensorMapL2promotion, CUtensorMapFloatOOBfill);

EncodeTiledFn EncodeTiled() {
  static EncodeTiledFn fn = [] {
    void* p = nullptr;
    cudaDriverEntryPointQueryResult q{};
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &p, 12000, cudaEnableDefault,
                                         &q) != cudaSuccess ||
        q != cudaDriverEntryPointSuccess) {
      return static_cast<EncodeTiledFn>(nullptr);
    }
    return reinterpret_cast<EncodeTiledFn>(p);
  }();
  return fn;
}

// 2-D map over rows of `cols` 16-bit elements at `row_stride` elements; boxes of 64 columns x
// 128 rows, 128-byte swizzle; rows past `rows` read as zeros.
bool MakeMap(CUtensorMap* map, DType dtype, const void* ptr, int64_t cols, int64_t rows,
             int64_t row_stride) {
  EncodeTiledFn fn = EncodeTiled();
  if (fn == nullptr) return false;
  const cuuint64_t dims[2] = {static_cast<cuuint64_t>(cols), static_cast<cuuint64_t>(rows)};
  const cuuint64_t strides[1] = {static_cast<cuuint64_t>(row_stride) * 2};
  const cuuint32_t box[2] = {64, 128};
  const cuuint32_t elem[2] = {1, 1};
  const CUresult r =
      fn(map,
         dtype == DType::kBf16 ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 : CU_TENSOR_MAP_DATA_TYPE_FLOAT16,
         2, const_cast<void*>(ptr), dims, strides, box, elem, CU_TENSOR_MAP_INTERLEAVE_NONE,
         CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
         CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  return r == CUDA_SUCCESS;
}

// 3-D map over a paged pool [blocks, block_size, head_dim] (blocks at block_stride elements):
// boxes of one page (block_size rows x 64 columns), 128-byte swizzle. The block count is not
// known on the host; the bound is a ceiling the kernel never reaches (it reads only listed
// blocks), not a check.
bool MakePoolMap(CUtensorMap* map, DType dtype, const void* pool, int32_t head_dim,
                 int32_t block_size, int64_t block_stride) {
  EncodeTiledFn fn = EncodeTiled();
  if (fn == nullptr) return false;
  const cuuint64_t dims[3] = {static_cast<cuuint64_t>(head_dim),
                              static_cast<cuuint64_t>(block_size), cuuint64_t{1} << 24};
  const cuuint64_t strides[2] = {static_cast<cuuint64_t>(head_dim) * 2,
                                 static_cast<cuuint64_t>(block_stride) * 2};
  const cuuint32_t box[3] = {64, static_cast<cuuint32_t>(block_size), 1};
  const cuuint32_t elem[3] = {1, 1, 1};
  const CUresult r =
      fn(map,
         dtype == DType::kBf16 ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 : CU_TENSOR_MAP_DATA_TYPE_FLOAT16,
         3, const_cast<void*>(pool), dims, strides, box, elem, CU_TENSOR_MAP_INTERLEAVE_NONE,
         CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
         CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  return r == CUDA_SUCCESS;
}

// 2-D map over a paged pool's rows (token vectors), for runs of consecutive blocks: boxes of
// 128 rows x 64 columns as MakeMap's. Only where the blocks are back to back (block_stride =
// block_size x head_dim); false elsewhere. The row count is a ceiling (MakePoolMap's).
bool MakeRunMap(CUtensorMap* map, DType dtype, const void* pool, int32_t head_dim,
                int32_t block_size, int64_t block_stride) {
  if (block_stride != static_cast<int64_t>(block_size) * head_dim) return false;
  return MakeMap(map, dtype, pool, head_dim, (int64_t{1} << 24) * block_size, head_dim);
}

bool Aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

// Whether the current device runs this kernel's sm_90a code (not the sm_80 PTX).
bool DeviceHasSm90a() {
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) return false;
  static std::once_flag once;
  static bool ok[64] = {};
  std::call_once(once, [] {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) return;
    cudaFuncAttributes attr{};
    const bool built =
        cudaFuncGetAttributes(&attr, PrefillAttentionSm90Kernel<__nv_bfloat16, 128, true>) ==
        cudaSuccess;
    for (int d = 0; d < n && d < 64; ++d) {
      int major = 0, minor = 0;
      cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, d);
      cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, d);
      ok[d] = built && major == 9 && minor == 0 && attr.binaryVersion == 90;
    }
  });
  return dev < 64 && ok[dev];
}

}  // namespace

bool PrefillAttentionSm90Supported(const PrefillAttentionArgs& p) {
  if (p.total_q <= 0 || (p.head_dim != 64 && p.head_dim != 128)) return false;
  if (!Aligned16(p.q) || !Aligned16(p.k) || !Aligned16(p.v) || !Aligned16(p.out) ||
      p.q_stride % 8 != 0 || p.kv_stride % 8 != 0 || p.out_stride % 2 != 0) {
    return false;
  }
  if (p.prefix != nullptr && (!Aligned16(p.prefix->k_pool) || !Aligned16(p.prefix->v_pool) ||
                              p.prefix->block_stride % 8 != 0)) {
    return false;
  }
  return DeviceHasSm90a();
}

cudaError_t RunPrefillAttentionSm90(const PrefillAttentionArgs& p, cudaStream_t stream) {
  CUtensorMap tq, tk, tv;
  if (!MakeMap(&tq, p.dtype, p.q, int64_t{p.num_q_heads} * p.head_dim, p.total_q, p.q_stride) ||
      !MakeMap(&tk, p.dtype, p.k, int64_t{p.num_kv_heads} * p.head_dim, p.total_q, p.kv_stride) ||
      !MakeMap(&tv, p.dtype, p.v, int64_t{p.num_kv_heads} * p.head_dim, p.total_q, p.kv_stride)) {
    return cudaErrorNotSupported;
  }
  Sm90Args a{};
  a.out = p.out;
  a.out_stride = p.out_stride;
  a.cu_seqlens = p.cu_seqlens;
  a.group = p.num_q_heads / p.num_kv_heads;
  a.scale_log2 = p.scale * 1.4426950408889634f;
  a.last_tile_only = p.last_tile_only ? 1 : 0;
  if (p.prefix != nullptr) {
    const PagedKvView& v = *p.prefix;
    a.indptr = v.indptr;
    a.indices = v.indices;
    a.last_len = v.last_len;
    a.row_seq_stride = v.row_seq_stride > 0 ? v.row_seq_stride : v.num_kv_heads;
    a.row_offset = v.row_offset;
    a.k_pool = v.k_pool;
    a.v_pool = v.v_pool;
    a.block_stride = v.block_stride;
    a.block_shift = __builtin_ctz(static_cast<unsigned>(v.block_size));
  }
  // Whole prefix tiles by TMA (the pipelined kernel; the serial one keeps the gather, so the
  // two differ there too): pages of 8..128 rows keep each page's box on 1024-byte atoms.
  // The kernel takes the pool maps either way; without page TMA they stay copies of the dense
  // maps and the kernel never reads them (page_tma = 0).
  CUtensorMap tkp = tk, tvp = tv, tkr = tk, tvr = tv;
  if (p.prefix != nullptr && p.kernel != PrefillKernel::kWgmmaSerial && p.prefix->block_size >= 8 &&
      p.prefix->block_size <= kBN &&
      MakePoolMap(&tkp, p.dtype, p.prefix->k_pool, p.head_dim, p.prefix->block_size,
                  p.prefix->block_stride) &&
      MakePoolMap(&tvp, p.dtype, p.prefix->v_pool, p.head_dim, p.prefix->block_size,
                  p.prefix->block_stride)) {
    a.page_tma = 1;
    a.run_tma = MakeRunMap(&tkr, p.dtype, p.prefix->k_pool, p.head_dim, p.prefix->block_size,
                           p.prefix->block_stride) &&
                MakeRunMap(&tvr, p.dtype, p.prefix->v_pool, p.head_dim, p.prefix->block_size,
                           p.prefix->block_stride);
  }
  const dim3 grid(p.last_tile_only ? 1 : (p.max_q_len + kBM - 1) / kBM, p.num_q_heads, p.num_seqs);
  const bool pipelined = p.kernel != PrefillKernel::kWgmmaSerial;
  return DispatchDType(p.dtype, [&](auto t) {
    using T = decltype(t);
    return DispatchHeadDim(p.head_dim, [&](auto hd) {
      constexpr int D = decltype(hd)::value;
      constexpr int kSmem = Smem<D>::kTotal;
      auto* kernel = pipelined ? PrefillAttentionSm90Kernel<T, D, true>
                               : PrefillAttentionSm90Kernel<T, D, false>;
      cudaError_t e =
          cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmem);
      if (e != cudaSuccess) return e;
      kernel<<<grid, kThreads, kSmem, stream>>>(tq, tk, tv, tkp, tvp, tkr, tvr, a);
      return cudaGetLastError();
    });
  });
}

}  // namespace hkv::kernels
