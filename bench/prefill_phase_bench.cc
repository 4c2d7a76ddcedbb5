// Where one long prefill's GPU time goes: runs the CUDA worker's per-layer kernel sequence
// (workers/cuda/forward.cc: LayerAttention, LayerMlp, SampleStep) for one prompt at the
// Llama-3-8B shape (32 layers, dim 4096, 32 q / 8 kv heads of 128, MLP 14336, vocab 128256,
// bf16, random weights) and times every phase with CUDA events, summed over the layers.
// Prints a table: ms per phase, share of the total, and TFLOP/s of each GEMM and of attention
// against this GPU's measured dense bf16 GEMM peak (an 8192^3 cuBLAS GEMM), and for each GEMM
// shape the best of cuBLASLt's heuristic algorithms (what tuning the algorithm would give).
//
//   prefill_phase_bench [TOKENS] [CHUNK] [POLICY] [KERNEL] [LAST_LAYER]
//     TOKENS 32768, CHUNK = TOKENS, POLICY full | headkv, KERNEL auto | mma | wgmma |
//     wgmma_serial (the prefill attention kernel), LAST_LAYER sampled | all (all: the last
//     layer's attention and MLP for every row, as the worker ran before it pruned them)
//
// chunk < tokens prefills in chunks as the scheduler does for the full policy: chunk i attends
// to the previous chunks' K/V in the paged pool (16-token pages). headkv (one chunk only, as
// the engine prefills a compressed prompt): dense attention, then the fused selection kernel
// keeps 120 + 8 tokens per head (HeadKV-128) instead of the KV writes. As in forward.cc, the
// last layer goes past its K/V only for the prompt's last row (PrunesLastLayer): attention
// of the last 128-row tile, then o_proj and the MLP of one row (none in earlier chunks).
// The calls and their arguments mirror forward.cc; keep them in step when it changes.

#include <cublasLt.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "bench/cuda_bench_util.h"
#include "bench/gemm_rates.h"
#include "kernels/gemm.h"
#include "kernels/gemv.h"
#include "kernels/kv_append.h"
#include "kernels/kv_select.h"
#include "kernels/layer_ops.h"
#include "kernels/prefill_attention.h"

namespace hkv::kernels {
namespace {

constexpr int32_t kLayers = 32, kDim = 4096, kHq = 32, kHkv = 8, kHd = 128, kHidden = 14336;
constexpr int32_t kVocab = 128256, kBlock = 16, kWindow = 8, kCap = 120;
constexpr int32_t kQSize = kHq * kHd, kKvSize = kHkv * kHd, kQkvW = kQSize + 2 * kKvSize;
constexpr DType kDt = DType::kBf16;
using bench::GemmPeakTflops;
using bench::LtBestTflops;
using bench::Phases;
using bench::Random;
using bench::Upload;

int Run(int32_t tokens, int32_t chunk, bool headkv, PrefillKernel kernel, bool prune) {
  cudaStream_t stream;
  CHECK_CUDA(cudaStreamCreate(&stream));
  cublasHandle_t cublas;
  CHECK_CUBLAS(cublasCreate(&cublas));
  CHECK_CUBLAS(cublasSetStream(cublas, stream));
  const double peak = GemmPeakTflops(cublas, stream);

  // One layer's weights, shared by the 32 layers (each is ~0.44 GB: read from HBM every time).
  void* wqkv = Random(static_cast<size_t>(kQkvW) * kDim, 3);
  void* wo = Random(static_cast<size_t>(kDim) * kQSize, 4);
  void* w_gate_up = Random(static_cast<size_t>(2) * kHidden * kDim, 5);
  void* w_down = Random(static_cast<size_t>(kDim) * kHidden, 6);
  void* norm_w = Random(kDim, 7);
  void* embedding = Random(static_cast<size_t>(kVocab) * kDim, 8);
  const int32_t c = chunk;
  void* res = Random(static_cast<size_t>(c) * kDim, 9);
  void *xb, *qkv, *attn, *tmp, *gate_up, *hidden, *logits, *last_x, *last_attn;
  CHECK_CUDA(cudaMalloc(&xb, static_cast<size_t>(c) * kDim * 2));
  CHECK_CUDA(cudaMalloc(&qkv, static_cast<size_t>(c) * kQkvW * 2));
  CHECK_CUDA(cudaMalloc(&attn, static_cast<size_t>(c) * kQSize * 2));
  CHECK_CUDA(cudaMalloc(&tmp, static_cast<size_t>(c) * kDim * 2));
  CHECK_CUDA(cudaMalloc(&gate_up, static_cast<size_t>(c) * 2 * kHidden * 2));
  CHECK_CUDA(cudaMalloc(&hidden, static_cast<size_t>(c) * kHidden * 2));
  CHECK_CUDA(cudaMalloc(&logits, static_cast<size_t>(kVocab) * 4));
  CHECK_CUDA(cudaMalloc(&last_x, static_cast<size_t>(kDim) * 2));
  CHECK_CUDA(cudaMalloc(&last_attn, static_cast<size_t>(kQSize) * 2));
  std::vector<int32_t> ids(c);
  std::mt19937 rng(11);
  for (auto& x : ids) x = static_cast<int32_t>(rng() % kVocab);
  const int32_t* d_ids = Upload(ids);
  std::vector<float> inv_freq(kHd / 2);
  for (int32_t i = 0; i < kHd / 2; ++i) {
    inv_freq[i] = static_cast<float>(1.0 / std::pow(500000.0, 2.0 * i / kHd));
  }
  const float* d_inv_freq = Upload(inv_freq);

  // Paged pool of one layer (the layers' pools cost the same to write): kv head h's row holds
  // the prompt's tokens in blocks h * blocks_per_head ...
  const int32_t blocks_per_head = (tokens + kBlock - 1) / kBlock;
  const size_t pool_elems = static_cast<size_t>(kHkv) * blocks_per_head * kBlock * kHd;
  void *k_pool, *v_pool;
  CHECK_CUDA(cudaMalloc(&k_pool, pool_elems * 2));
  CHECK_CUDA(cudaMalloc(&v_pool, pool_elems * 2));
  CHECK_CUDA(cudaMemset(k_pool, 0, pool_elems * 2));
  CHECK_CUDA(cudaMemset(v_pool, 0, pool_elems * 2));
  std::vector<int32_t> all_blocks(static_cast<size_t>(kHkv) * blocks_per_head);
  std::iota(all_blocks.begin(), all_blocks.end(), 0);
  const int32_t* d_blocks = Upload(all_blocks);

  // HeadKV-128 selection: caps 120 per head, destination rows of 8 blocks each.
  KvSelectArgs ks;
  if (headkv) {
    const int32_t nb = (kCap + kWindow + kBlock - 1) / kBlock;
    std::vector<int32_t> indptr(kHkv + 1), caps(kHkv, kCap);
    for (int32_t h = 0; h <= kHkv; ++h) indptr[h] = h * nb;
    void* ws = nullptr;
    CHECK_CUDA(cudaMalloc(&ws, KvSelectWorkspaceBytes(tokens, kWindow, kHq, kHkv)));
    int32_t *count, *kept_idx;
    CHECK_CUDA(cudaMalloc(&count, kHkv * 4));
    CHECK_CUDA(cudaMalloc(&kept_idx, static_cast<size_t>(kHkv) * tokens * 4));
    ks.dtype = kDt;
    ks.q_window = static_cast<uint16_t*>(qkv) + static_cast<size_t>(tokens - kWindow) * kQkvW;
    ks.keys = static_cast<uint16_t*>(qkv) + kQSize;
    ks.values = static_cast<uint16_t*>(qkv) + kQSize + kKvSize;
    ks.q_stride = ks.kv_stride = kQkvW;
    ks.n = tokens;
    ks.window = kWindow;
    ks.num_q_heads = kHq;
    ks.num_kv_heads = kHkv;
    ks.head_dim = kHd;
    ks.scale = 1.0f / std::sqrt(static_cast<float>(kHd));
    ks.caps = Upload(caps);
    ks.dest_indptr = Upload(indptr);
    ks.dest_indices = d_blocks;
    ks.k_pool = k_pool;
    ks.v_pool = v_pool;
    ks.block_stride = kBlock * kHd;
    ks.block_size = kBlock;
    ks.workspace = ws;
    ks.kept_count = count;
    ks.kept_index = kept_idx;
  }

  Phases ph(stream);
  auto step = [&](int32_t start, int32_t n, bool timed) {
    // Per-chunk page table: the prefix (earlier chunks) and the slots of this chunk's tokens.
    std::vector<int32_t> indptr{0}, last, cu{0, n}, pos(n);
    std::vector<int32_t> prefix_blocks;
    for (int32_t h = 0; h < kHkv; ++h) {
      const int32_t nb = (start + kBlock - 1) / kBlock;
      for (int32_t b = 0; b < nb; ++b) prefix_blocks.push_back(h * blocks_per_head + b);
      indptr.push_back(static_cast<int32_t>(prefix_blocks.size()));
      last.push_back(nb == 0 ? 0 : start - (nb - 1) * kBlock);
    }
    std::vector<int64_t> slots(static_cast<size_t>(n) * kHkv);
    for (int32_t t = 0; t < n; ++t) {
      pos[t] = start + t;
      for (int32_t h = 0; h < kHkv; ++h) {
        slots[static_cast<size_t>(t) * kHkv + h] =
            static_cast<int64_t>(h) * blocks_per_head * kBlock + start + t;
      }
    }
    const int32_t* d_indptr = Upload(indptr);
    const int32_t* d_idx = Upload(prefix_blocks);
    const int32_t* d_last = Upload(last);
    const int32_t* d_cu = Upload(cu);
    const int32_t* d_pos = Upload(pos);
    const int64_t* d_slots = Upload(slots);
    PagedKvView pool{d_indptr, d_idx, d_last, k_pool, v_pool, kBlock * kHd, kBlock, kHkv, kHd};
    auto mark = [&](const char* name) {
      if (timed) ph.Mark(name);
    };
    auto* q = static_cast<uint16_t*>(qkv);
    mark("embedding");
    CHECK_CUDA(EmbeddingLookup(kDt, embedding, kVocab, kDim, d_ids, n, res, stream));
    void* mlp_attn = attn;  // the rows o_proj and the MLP run on: all, then the last layer's
    void* mlp_res = res;
    int32_t rows = n;
    for (int32_t l = 0; l < kLayers; ++l) {
      const bool last_layer = prune && l == kLayers - 1;
      mark("attn_norm");
      CHECK_CUDA(RmsNorm(kDt, l == 0 ? res : tmp, l == 0 ? nullptr : res, norm_w, xb, n, kDim,
                         1e-5f, stream));
      mark("qkv_proj");
      CHECK_CUBLAS(LinearRowMajor(cublas, stream, kDt, xb, kDim, wqkv, kDim, q, kQkvW, false, n,
                                  kQkvW, kDim));
      mark("rope");
      CHECK_CUDA(Rope(kDt, q, kQkvW, kHq, q + kQSize, kQkvW, kHkv, d_pos, n, kHd, 500000.0f,
                      d_inv_freq, RopeStyle::kRotateHalf, stream));
      if (!headkv) {
        mark("kv_write");
        CHECK_CUDA(
            AppendKvSlots(kDt, pool, q + kQSize, q + kQSize + kKvSize, kQkvW, d_slots, n, stream));
      }
      mark("attention");
      PrefillAttentionArgs a;
      a.dtype = kDt;
      a.q = q;
      a.k = q + kQSize;
      a.v = q + kQSize + kKvSize;
      a.out = attn;
      a.q_stride = a.kv_stride = kQkvW;
      a.out_stride = kQSize;
      a.cu_seqlens = d_cu;
      a.num_seqs = 1;
      a.max_q_len = n;
      a.num_q_heads = kHq;
      a.num_kv_heads = kHkv;
      a.head_dim = kHd;
      a.scale = 1.0f / std::sqrt(static_cast<float>(kHd));
      a.prefix = start > 0 ? &pool : nullptr;
      a.total_q = n;
      a.kernel = kernel;
      a.last_tile_only = last_layer;
      CHECK_CUDA(RunPrefillAttention(a, stream));
      if (headkv) {
        mark("selection");
        CHECK_CUDA(RunKvSelect(ks, stream));
      }
      if (last_layer) {  // the prompt's last row samples (the last chunk's); others none
        mark("gather_sampled");
        rows = start + n == tokens ? 1 : 0;
        CHECK_CUDA(cudaMemcpyAsync(
            last_attn, static_cast<uint16_t*>(attn) + static_cast<size_t>(n - 1) * kQSize,
            kQSize * 2, cudaMemcpyDeviceToDevice, stream));
        CHECK_CUDA(cudaMemcpyAsync(last_x,
                                   static_cast<uint16_t*>(res) + static_cast<size_t>(n - 1) * kDim,
                                   kDim * 2, cudaMemcpyDeviceToDevice, stream));
        mlp_attn = last_attn;
        mlp_res = last_x;
        if (rows == 0) break;
      }
      mark("o_proj");
      CHECK_CUBLAS(LinearRowMajor(cublas, stream, kDt, mlp_attn, kQSize, wo, kQSize, tmp, kDim,
                                  false, rows, kDim, kQSize));
      mark("ffn_norm");
      CHECK_CUDA(RmsNorm(kDt, tmp, mlp_res, norm_w, xb, rows, kDim, 1e-5f, stream));
      mark("gate_up_proj");
      CHECK_CUBLAS(LinearRowMajor(cublas, stream, kDt, xb, kDim, w_gate_up, kDim, gate_up,
                                  2 * kHidden, false, rows, 2 * kHidden, kDim));
      mark("swiglu");
      CHECK_CUDA(SwiGlu(kDt, gate_up, static_cast<uint16_t*>(gate_up) + kHidden, 2 * kHidden,
                        hidden, rows, kHidden, stream));
      mark("down_proj");
      CHECK_CUBLAS(LinearRowMajor(cublas, stream, kDt, hidden, kHidden, w_down, kHidden, tmp, kDim,
                                  false, rows, kDim, kHidden));
    }
    if (rows > 0) {
      mark("final_norm");
      CHECK_CUDA(RmsNorm(kDt, tmp, mlp_res, norm_w, xb, rows, kDim, 1e-5f, stream));
      mark("lm_head");  // the last row (pruned: the only one, gathered before the last MLP)
      const uint16_t* x = static_cast<uint16_t*>(xb) + static_cast<size_t>(rows - 1) * kDim;
      CHECK_CUBLAS(LinearRowMajor(cublas, stream, kDt, x, kDim, embedding, kDim, logits, kVocab,
                                  true, 1, kVocab, kDim));
    }
    mark("end");
    CHECK_CUDA(cudaStreamSynchronize(stream));
    for (const void* p : {static_cast<const void*>(d_indptr), static_cast<const void*>(d_idx),
                          static_cast<const void*>(d_last), static_cast<const void*>(d_cu),
                          static_cast<const void*>(d_pos), static_cast<const void*>(d_slots)}) {
      CHECK_CUDA(cudaFree(const_cast<void*>(p)));
    }
  };
  auto prompt = [&](bool timed) {
    for (int32_t start = 0; start < tokens; start += chunk) {
      step(start, std::min(chunk, tokens - start), timed);
    }
  };
  prompt(false);  // warm-up: cuBLAS heuristics, tensor maps, clocks
  prompt(true);
  const auto ms = ph.Sum();
  double total = 0;
  for (const auto& [name, t] : ms) total += t;

  // FLOPs per phase over the prompt, as run (each chunk's GEMMs at m = chunk rows; the last
  // layer's o_proj and MLP of one row; its attention, one tile of rows, is left out).
  const double T = tokens;
  const double full = prune ? kLayers - 1 : kLayers;  // layers past their K/V for every row
  std::map<std::string, double> flops = {
      {"qkv_proj", 2.0 * T * kQkvW * kDim * kLayers},
      {"o_proj", 2.0 * (T * full + (prune ? 1 : 0)) * kDim * kQSize},
      {"gate_up_proj", 2.0 * (T * full + (prune ? 1 : 0)) * 2 * kHidden * kDim},
      {"down_proj", 2.0 * (T * full + (prune ? 1 : 0)) * kDim * kHidden},
      {"attention", 4.0 * kHd * kHq * (T * (T + 1) / 2) * full},
  };
  std::printf(
      "# prefill of %d tokens in chunks of %d, policy %s, last layer: %s, attention "
      "kernel %s\n",
      tokens, chunk, headkv ? "headkv-128" : "full", prune ? "sampled row" : "every row",
      kernel == PrefillKernel::kMmaSync       ? "mma"
      : kernel == PrefillKernel::kWgmma       ? "wgmma"
      : kernel == PrefillKernel::kWgmmaSerial ? "wgmma_serial"
                                              : "auto");
  std::printf("# measured dense bf16 GEMM peak (cuBLAS 8192^3): %.0f TFLOP/s\n\n", peak);
  // GEMM shapes per chunk (m rows): the best cuBLASLt algorithm for comparison.
  cublasLtHandle_t lt;
  CHECK_CUBLAS(cublasLtCreate(&lt));
  const std::map<std::string, std::pair<int32_t, int32_t>> shapes = {
      {"qkv_proj", {kQkvW, kDim}},
      {"o_proj", {kDim, kQSize}},
      {"gate_up_proj", {2 * kHidden, kDim}},
      {"down_proj", {kDim, kHidden}}};
  std::map<std::string, double> lt_best, alone;
  for (const auto& [name, nk] : shapes) {
    lt_best[name] = LtBestTflops(lt, cublas, stream, chunk, nk.first, nk.second, &alone[name]);
  }
  cublasLtDestroy(lt);
  std::printf(
      "| phase | ms | share | TFLOP/s | of GEMM peak | alone: default / best cuBLASLt algo "
      "TFLOP/s |\n"
      "|---|---|---|---|---|---|\n");
  for (const auto& name : ph.order()) {
    const double t = ms.at(name);
    const auto f = flops.find(name);
    if (f != flops.end()) {
      const double tf = f->second / t / 1e9;
      const auto b = lt_best.find(name);
      const std::string lt_col = b == lt_best.end()
                                     ? "-"
                                     : std::to_string(static_cast<int>(alone.at(name))) + " / " +
                                           std::to_string(static_cast<int>(b->second));
      std::printf("| %s | %.2f | %.1f%% | %.0f | %.0f%% | %s |\n", name.c_str(), t, 100 * t / total,
                  tf, 100 * tf / peak, lt_col.c_str());
    } else {
      std::printf("| %s | %.2f | %.1f%% | - | - | - |\n", name.c_str(), t, 100 * t / total);
    }
  }
  double gemm_ms = 0, gemm_flops = 0;
  for (const char* g : {"qkv_proj", "o_proj", "gate_up_proj", "down_proj"}) {
    gemm_ms += ms.at(g);
    gemm_flops += flops.at(g);
  }
  std::printf("| **total** | **%.2f** | 100%% | - | - | - |\n", total);
  std::printf(
      "\n{\"kind\": \"prefill_phases\", \"tokens\": %d, \"chunk\": %d, \"total_ms\": %.2f, "
      "\"gemm_ms\": %.2f, \"gemm_tflops\": %.1f, \"attention_ms\": %.2f, \"peak_tflops\": "
      "%.1f}\n",
      tokens, chunk, total, gemm_ms, gemm_flops / gemm_ms / 1e9, ms.at("attention"), peak);
  return 0;
}

}  // namespace
}  // namespace hkv::kernels

int main(int argc, char** argv) {
  using namespace hkv::kernels;
  const int32_t tokens = argc > 1 ? std::atoi(argv[1]) : 32768;
  const int32_t chunk = argc > 2 ? std::atoi(argv[2]) : tokens;
  const std::string policy = argc > 3 ? argv[3] : "full";
  const std::string kernel = argc > 4 ? argv[4] : "auto";
  const std::string last = argc > 5 ? argv[5] : "sampled";
  if (tokens < 16 || chunk < 1 || chunk > tokens || (policy != "full" && policy != "headkv") ||
      (policy == "headkv" && chunk != tokens) ||
      (kernel != "auto" && kernel != "mma" && kernel != "wgmma" && kernel != "wgmma_serial") ||
      (last != "sampled" && last != "all")) {
    std::fprintf(stderr,
                 "usage: prefill_phase_bench [tokens] [chunk] [full|headkv] "
                 "[auto|mma|wgmma|wgmma_serial] [sampled|all]\n"
                 "       (headkv prefills in one chunk)\n");
    return 2;
  }
  return Run(tokens, chunk, policy == "headkv",
             kernel == "mma"            ? PrefillKernel::kMmaSync
             : kernel == "wgmma"        ? PrefillKernel::kWgmma
             : kernel == "wgmma_serial" ? PrefillKernel::kWgmmaSerial
                                        : PrefillKernel::kAuto,
             last == "sampled");
}
