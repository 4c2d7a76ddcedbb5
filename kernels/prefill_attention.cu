// Causal GQA prefill attention with mma.sync tensor cores; see prefill_attention.h.
//
// NOTE(kernels): FlashAttention-2 structure. A CTA of 4 warps owns 128 queries of one query
// head; each warp owns 32 query rows (two m16 tiles, so every K/V fragment loaded from shared
// memory feeds two mma.sync) and walks key tiles of 64: S = Q K^T with Q and K in shared
// memory (ldmatrix), online softmax in fp32 on the accumulator fragments, then O += P V with P
// re-packed from the accumulators as A-fragments and V read by ldmatrix.trans. Q and the K/V
// tiles arrive by cp.async, K/V two stages deep; padded rows keep ldmatrix free of bank
// conflicts; the causal mask is applied only on tiles crossing an m-tile's diagonal.
// Measured on H100 (bench/README.md): 16 rows per warp gave 264 TFLOP/s at 32k, 32 rows 327.
// On sm_90 kAuto runs the wgmma kernel (prefill_attention_sm90.cu) instead; see kAuto.

#include <type_traits>

#include "kernels/cuda_common.cuh"
#include "kernels/prefill_attention.h"
#include "kernels/prefill_attention_sm90.h"

namespace hkv::kernels {
namespace {

constexpr int kBM = 128;  // 4 warps x 32 query rows
constexpr int kBN = 64;
constexpr int kThreads = 128;

struct KernelArgs {
  const void* q;
  const void* k;
  const void* v;
  void* out;
  int64_t q_stride, kv_stride, out_stride;
  const int32_t* cu_seqlens;
  int32_t num_kv_heads, group;
  float scale_log2;
  // Prefix (paged) K/V; indptr == nullptr when absent.
  const int32_t* indptr;
  const int32_t* indices;
  const int32_t* last_len;
  int32_t row_seq_stride, row_offset;
  const void* k_pool;
  const void* v_pool;
  int64_t block_stride;
  int32_t block_shift;
  int32_t last_tile_only;  // PrefillAttentionArgs::last_tile_only
};

template <typename T>
__device__ __forceinline__ void Mma(float* c, const uint32_t* a, uint32_t b0, uint32_t b1) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
}

template <typename T>
__device__ __forceinline__ uint32_t PackPair(float lo, float hi) {
  T a = FromFloat<T>(lo), b = FromFloat<T>(hi);
  return static_cast<uint32_t>(*reinterpret_cast<uint16_t*>(&a)) |
         (static_cast<uint32_t>(*reinterpret_cast<uint16_t*>(&b)) << 16);
}

__device__ __forceinline__ void LdMatrixX4(uint32_t* r, const void* smem) {
  const uint32_t a = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(a));
}

__device__ __forceinline__ void LdMatrixX4Trans(uint32_t* r, const void* smem) {
  const uint32_t a = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(a));
}

template <int kHeadDim>
constexpr int SmemBytes() {
  return (kBM + 2 /*stages*/ * 2 /*K,V*/ * kBN) * (kHeadDim + 8) * 2;
}

template <typename T, int kHeadDim>
__global__ void __launch_bounds__(kThreads, 2) PrefillAttentionKernel(KernelArgs a) {
  constexpr int kStride = kHeadDim + 8;  // padded smem row (elements)
  constexpr int kChunks = kHeadDim / 8;  // 16-byte chunks per token
  constexpr int kTile = kBN * kStride;
  constexpr int kNt = kHeadDim / 8;  // output n-tiles
  constexpr int kSt = kBN / 8;       // score n-tiles
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* sq = reinterpret_cast<T*>(smem_raw);  // [kBM][kStride]
  T* skv = sq + kBM * kStride;             // [stage][K|V][kBN][kStride]

  const int seq = blockIdx.z, h = blockIdx.y;
  const int q_begin = a.cu_seqlens[seq];
  const int nq = a.cu_seqlens[seq + 1] - q_begin;
  // Heaviest (longest causal span) tiles first; last_tile_only: the tile of the last row.
  const int tile_q =
      a.last_tile_only ? max(nq - 1, 0) / kBM * kBM : (gridDim.x - 1 - blockIdx.x) * kBM;
  if (tile_q >= nq) return;
  const int kvh = h / a.group;
  int prefix = 0;
  const int32_t* blocks = nullptr;
  if (a.indptr != nullptr) {
    const int row = seq * a.row_seq_stride + a.row_offset + kvh;
    const int nb = a.indptr[row + 1] - a.indptr[row];
    prefix = nb <= 0 ? 0 : ((nb - 1) << a.block_shift) + a.last_len[row];
    blocks = a.indices + a.indptr[row];
  }
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int g = lane >> 2, tig = lane & 3;
  const int lm = lane >> 3, lr = lane & 7;   // ldmatrix: matrix index, row within it
  const int warp_row0 = tile_q + warp * 32;  // this warp owns rows warp_row0 .. +31

  const int max_key = prefix + min(tile_q + kBM, nq) - 1;  // inclusive
  const int num_tiles = max_key / kBN + 1;
  const T* kd = static_cast<const T*>(a.k) + static_cast<int64_t>(kvh) * kHeadDim;
  const T* vd = static_cast<const T*>(a.v) + static_cast<int64_t>(kvh) * kHeadDim;
  const T* kp = static_cast<const T*>(a.k_pool);
  const T* vp = static_cast<const T*>(a.v_pool);
  const int bmask = (1 << a.block_shift) - 1;
  auto load_tile = [&](int kb, int stage) {
    T* sk = skv + stage * 2 * kTile;
    T* sv = sk + kTile;
    for (int c = threadIdx.x; c < kBN * kChunks; c += kThreads) {
      const int key = c / kChunks, dc = (c % kChunks) * 8, p = kb * kBN + key;
      const bool valid = p <= max_key;
      const T* ksrc = kd;
      const T* vsrc = vd;
      if (valid) {
        if (p < prefix) {
          const int64_t off = static_cast<int64_t>(blocks[p >> a.block_shift]) * a.block_stride +
                              (p & bmask) * kHeadDim + dc;
          ksrc = kp + off;
          vsrc = vp + off;
        } else {
          const int64_t off = static_cast<int64_t>(q_begin + p - prefix) * a.kv_stride + dc;
          ksrc = kd + off;
          vsrc = vd + off;
        }
      }
      CpAsync16(sk + key * kStride + dc, ksrc, valid);
      CpAsync16(sv + key * kStride + dc, vsrc, valid);
    }
    CpAsyncCommit();
  };
  {  // Q tile (rows past the chunk are zero) joins the first K/V group.
    const T* q = static_cast<const T*>(a.q) + static_cast<int64_t>(h) * kHeadDim;
    for (int c = threadIdx.x; c < kBM * kChunks; c += kThreads) {
      const int r = c / kChunks, dc = (c % kChunks) * 8;
      const bool valid = tile_q + r < nq;
      CpAsync16(sq + r * kStride + dc,
                q + static_cast<int64_t>(q_begin + (valid ? tile_q + r : 0)) * a.q_stride + dc,
                valid);
    }
  }
  load_tile(0, 0);

  float o[2][kNt][4];
#pragma unroll
  for (int mt = 0; mt < 2; ++mt) {
#pragma unroll
    for (int n = 0; n < kNt; ++n) o[mt][n][0] = o[mt][n][1] = o[mt][n][2] = o[mt][n][3] = 0.0f;
  }
  float m[2][2] = {{-1e30f, -1e30f}, {-1e30f, -1e30f}};  // [m-tile][row half], scaled log2
  float l[2][2] = {{0.0f, 0.0f}, {0.0f, 0.0f}};

  for (int kb = 0; kb < num_tiles; ++kb) {
    if (kb + 1 < num_tiles) {
      load_tile(kb + 1, (kb + 1) & 1);
      CpAsyncWait<1>();
    } else {
      CpAsyncWait<0>();
    }
    __syncthreads();
    const T* sk = skv + (kb & 1) * 2 * kTile;
    const T* sv = sk + kTile;

    float s[2][kSt][4];
#pragma unroll
    for (int mt = 0; mt < 2; ++mt) {
#pragma unroll
      for (int j = 0; j < kSt; ++j) s[mt][j][0] = s[mt][j][1] = s[mt][j][2] = s[mt][j][3] = 0.0f;
    }
#pragma unroll
    for (int kk = 0; kk < kHeadDim / 16; ++kk) {
      uint32_t qa[2][4];
#pragma unroll
      for (int mt = 0; mt < 2; ++mt) {
        LdMatrixX4(qa[mt], sq + (warp * 32 + mt * 16 + (lm & 1) * 8 + lr) * kStride + kk * 16 +
                               (lm >> 1) * 8);
      }
#pragma unroll
      for (int j = 0; j < kSt; j += 2) {
        uint32_t b[4];  // (j, lo), (j, hi), (j+1, lo), (j+1, hi)
        LdMatrixX4(b, sk + ((j + (lm >> 1)) * 8 + lr) * kStride + kk * 16 + (lm & 1) * 8);
#pragma unroll
        for (int mt = 0; mt < 2; ++mt) {
          Mma<T>(s[mt][j], qa[mt], b[0], b[1]);
          Mma<T>(s[mt][j + 1], qa[mt], b[2], b[3]);
        }
      }
    }
#pragma unroll
    for (int mt = 0; mt < 2; ++mt) {
      const int r0 = warp_row0 + mt * 16 + g;  // rows r0 (e = 0, 1) and r0 + 8 (e = 2, 3)
      // Causal mask only where the tile crosses this m-tile's diagonal.
      if (kb * kBN + kBN - 1 > prefix + warp_row0 + mt * 16) {
#pragma unroll
        for (int j = 0; j < kSt; ++j) {
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int col = kb * kBN + j * 8 + tig * 2 + (e & 1);
            if (col > prefix + r0 + (e >> 1) * 8) s[mt][j][e] = -INFINITY;
          }
        }
      }
      float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
      for (int j = 0; j < kSt; ++j) {
        mx[0] = fmaxf(mx[0], fmaxf(s[mt][j][0], s[mt][j][1]));
        mx[1] = fmaxf(mx[1], fmaxf(s[mt][j][2], s[mt][j][3]));
      }
#pragma unroll
      for (int rr = 0; rr < 2; ++rr) {
        mx[rr] = fmaxf(mx[rr], __shfl_xor_sync(0xffffffffu, mx[rr], 1));
        mx[rr] = fmaxf(mx[rr], __shfl_xor_sync(0xffffffffu, mx[rr], 2));
        const float mn = fmaxf(m[mt][rr], mx[rr] * a.scale_log2);
        const float corr = FastExp2(m[mt][rr] - mn);
        m[mt][rr] = mn;
        l[mt][rr] *= corr;
#pragma unroll
        for (int n = 0; n < kNt; ++n) {
          o[mt][n][rr * 2] *= corr;
          o[mt][n][rr * 2 + 1] *= corr;
        }
      }
#pragma unroll
      for (int j = 0; j < kSt; ++j) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          s[mt][j][e] = FastExp2(fmaf(s[mt][j][e], a.scale_log2, -m[mt][e >> 1]));
          l[mt][e >> 1] += s[mt][j][e];
        }
      }
    }
#pragma unroll
    for (int kk = 0; kk < kBN / 16; ++kk) {
      uint32_t pa[2][4];
#pragma unroll
      for (int mt = 0; mt < 2; ++mt) {
        pa[mt][0] = PackPair<T>(s[mt][2 * kk][0], s[mt][2 * kk][1]);
        pa[mt][1] = PackPair<T>(s[mt][2 * kk][2], s[mt][2 * kk][3]);
        pa[mt][2] = PackPair<T>(s[mt][2 * kk + 1][0], s[mt][2 * kk + 1][1]);
        pa[mt][3] = PackPair<T>(s[mt][2 * kk + 1][2], s[mt][2 * kk + 1][3]);
      }
#pragma unroll
      for (int n = 0; n < kNt; n += 2) {
        uint32_t b[4];  // (keys lo, n), (keys hi, n), (keys lo, n+1), (keys hi, n+1)
        LdMatrixX4Trans(b, sv + (kk * 16 + (lm & 1) * 8 + lr) * kStride + (n + (lm >> 1)) * 8);
#pragma unroll
        for (int mt = 0; mt < 2; ++mt) {
          Mma<T>(o[mt][n], pa[mt], b[0], b[1]);
          Mma<T>(o[mt][n + 1], pa[mt], b[2], b[3]);
        }
      }
    }
    __syncthreads();  // the next iteration's load overwrites this stage
  }
  T* out = static_cast<T*>(a.out) + static_cast<int64_t>(h) * kHeadDim + tig * 2;
#pragma unroll
  for (int mt = 0; mt < 2; ++mt) {
#pragma unroll
    for (int rr = 0; rr < 2; ++rr) {
      float sum = l[mt][rr];
      sum += __shfl_xor_sync(0xffffffffu, sum, 1);
      sum += __shfl_xor_sync(0xffffffffu, sum, 2);
      const int row = warp_row0 + mt * 16 + g + rr * 8;
      if (row >= nq) continue;
      const float inv = sum > 0.0f ? 1.0f / sum : 0.0f;
      T* orow = out + static_cast<int64_t>(q_begin + row) * a.out_stride;
#pragma unroll
      for (int n = 0; n < kNt; ++n) {
        *reinterpret_cast<uint32_t*>(orow + n * 8) =
            PackPair<T>(o[mt][n][rr * 2] * inv, o[mt][n][rr * 2 + 1] * inv);
      }
    }
  }
}

}  // namespace

cudaError_t RunPrefillAttention(const PrefillAttentionArgs& p, cudaStream_t stream) {
  if (p.num_kv_heads < 1 || p.num_q_heads % p.num_kv_heads != 0 || p.num_seqs < 0 ||
      p.max_q_len < 0 || p.cu_seqlens == nullptr || (p.head_dim != 64 && p.head_dim != 128)) {
    return cudaErrorInvalidValue;
  }
  if (p.num_seqs == 0 || p.max_q_len == 0) return cudaSuccess;
  if (p.prefix != nullptr) {
    const PagedKvView& v = *p.prefix;
    if (v.head_dim != p.head_dim || v.num_kv_heads != p.num_kv_heads || v.block_size < 1 ||
        (v.block_size & (v.block_size - 1)) != 0) {
      return cudaErrorInvalidValue;
    }
  }
  if (p.kernel == PrefillKernel::kWgmma || p.kernel == PrefillKernel::kWgmmaSerial) {
    if (PrefillAttentionSm90Supported(p)) return RunPrefillAttentionSm90(p, stream);
    return cudaErrorNotSupported;
  }
  // kAuto: the wgmma kernel where it can run (1.8-2.1x the mma.sync kernel on the H200 at
  // 4k-32k, bench/README.md), else the mma.sync kernel. RunPrefillAttentionSm90 refuses (with
  // cudaErrorNotSupported, launching nothing) only when a TMA descriptor cannot be built.
  if (p.kernel == PrefillKernel::kAuto && PrefillAttentionSm90Supported(p)) {
    const cudaError_t e = RunPrefillAttentionSm90(p, stream);
    if (e != cudaErrorNotSupported) return e;
  }
  KernelArgs a{};
  a.q = p.q;
  a.k = p.k;
  a.v = p.v;
  a.out = p.out;
  a.q_stride = p.q_stride;
  a.kv_stride = p.kv_stride;
  a.out_stride = p.out_stride;
  a.cu_seqlens = p.cu_seqlens;
  a.num_kv_heads = p.num_kv_heads;
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
  const dim3 grid(p.last_tile_only ? 1 : (p.max_q_len + kBM - 1) / kBM, p.num_q_heads, p.num_seqs);
  return DispatchDType(p.dtype, [&](auto t) {
    using T = decltype(t);
    return DispatchHeadDim(p.head_dim, [&](auto hd) {
      constexpr int D = decltype(hd)::value;
      constexpr int kSmem = SmemBytes<D>();
      cudaError_t e = cudaFuncSetAttribute(PrefillAttentionKernel<T, D>,
                                           cudaFuncAttributeMaxDynamicSharedMemorySize, kSmem);
      if (e != cudaSuccess) return e;
      PrefillAttentionKernel<T, D><<<grid, kThreads, kSmem, stream>>>(a);
      return cudaGetLastError();
    });
  });
}

}  // namespace hkv::kernels
