// Kernel benchmark: times hkv's CUDA kernels on Llama-3-8B attention shapes (32 query heads,
// 8 KV heads, head_dim 128, bf16) and prints one JSON object per run on stdout.
// bench/run_kernel_bench.py runs it next to PyTorch on the same shapes and prints the table.
//
//   kernel_bench decode  <batch> <context>      uniform lengths (every head full)
//   kernel_bench decode_lens <file>             one row length per line, rows (seq, kv_head)
//   kernel_bench prefill <tokens> [KERNEL]      causal prefill, one sequence; KERNEL: auto (the
//                                               default: wgmma on sm_90, else mma.sync), wgmma,
//                                               wgmma_serial or mma
//   kernel_bench select  <tokens> <cap>         fused selection, every head keeps cap + 8
//   kernel_bench linear  <m> <n> <k>            skinny linear layer: hkv Gemv vs cuBLAS
//   kernel_bench fused   <qkv|o|gate_up|down> <m> <cols>   a fused decode product
//                                               (gemv_fused.h, Llama-3-8B shape, cols per warp)
//                                               vs the unfused kernels it replaces
//
// Timing: CUDA events around each call, median of the repetitions, after warm-up. Small
// caches are replicated and rotated so the timed reads come from HBM, not L2.

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "kernels/decode_attention.h"
#include "kernels/gemm.h"
#include "kernels/gemv.h"
#include "kernels/gemv_fused.h"
#include "kernels/kv_select.h"
#include "kernels/layer_ops.h"
#include "kernels/prefill_attention.h"

namespace hkv::kernels {
namespace {

constexpr int32_t kHq = 32, kHkv = 8, kD = 128, kBlock = 16;

#define CHECK_CUDA(expr)                                                                        \
  do {                                                                                          \
    const cudaError_t e = (expr);                                                               \
    if (e != cudaSuccess) {                                                                     \
      std::fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #expr, cudaGetErrorString(e)); \
      std::exit(1);                                                                             \
    }                                                                                           \
  } while (0)

// Fills `n` bf16 values with random data in [-1, 1) on the device.
void* RandomDevice(size_t n, uint32_t seed) {
  std::vector<uint16_t> h(std::min<size_t>(n, 1 << 22));
  std::mt19937 rng(seed);
  for (auto& x : h) x = static_cast<uint16_t>(0x3f00 + (rng() & 0x7f)) ^ (rng() & 0x8000);
  void* d = nullptr;
  CHECK_CUDA(cudaMalloc(&d, n * 2));
  for (size_t off = 0; off < n; off += h.size()) {
    CHECK_CUDA(cudaMemcpy(static_cast<uint16_t*>(d) + off, h.data(),
                          std::min(h.size(), n - off) * 2, cudaMemcpyHostToDevice));
  }
  return d;
}

// Median milliseconds of fn(i) over `reps` calls after `warmup` calls.
double MedianMs(int warmup, int reps, const std::function<void(int)>& fn) {
  for (int i = 0; i < warmup; ++i) fn(i);
  CHECK_CUDA(cudaDeviceSynchronize());
  cudaEvent_t a, b;
  CHECK_CUDA(cudaEventCreate(&a));
  CHECK_CUDA(cudaEventCreate(&b));
  std::vector<double> t;
  for (int i = 0; i < reps; ++i) {
    CHECK_CUDA(cudaEventRecord(a));
    fn(warmup + i);
    CHECK_CUDA(cudaEventRecord(b));
    CHECK_CUDA(cudaEventSynchronize(b));
    float ms = 0;
    CHECK_CUDA(cudaEventElapsedTime(&ms, a, b));
    t.push_back(ms);
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

int Decode(const std::vector<int64_t>& lens, const char* label) {
  const int32_t rows = static_cast<int32_t>(lens.size()), seqs = rows / kHkv;
  std::vector<int32_t> indptr{0}, indices, last;
  int64_t blocks = 0, tokens = 0;
  for (int64_t len : lens) {
    const int64_t nb = (len + kBlock - 1) / kBlock;
    blocks += nb;
    tokens += len;
    indptr.push_back(static_cast<int32_t>(blocks));
    last.push_back(nb == 0 ? 0 : static_cast<int32_t>(len - (nb - 1) * kBlock));
  }
  indices.resize(blocks);
  std::iota(indices.begin(), indices.end(), 0);
  std::mt19937 rng(1);
  std::shuffle(indices.begin(), indices.end(), rng);  // pages scattered over the pool
  const int64_t bytes = tokens * kD * 2 * 2;
  const int copies =
      static_cast<int>(std::clamp<int64_t>((512ll << 20) / std::max<int64_t>(bytes, 1), 1, 64));
  const size_t pool_elems = static_cast<size_t>(blocks) * kBlock * kD;
  void* k = RandomDevice(pool_elems * copies, 2);
  void* v = RandomDevice(pool_elems * copies, 3);
  void* q = RandomDevice(static_cast<size_t>(seqs) * kHq * kD, 4);
  void* out = nullptr;
  CHECK_CUDA(cudaMalloc(&out, static_cast<size_t>(seqs) * kHq * kD * 2));
  int32_t *d_indptr, *d_indices, *d_last;
  CHECK_CUDA(cudaMalloc(&d_indptr, indptr.size() * 4));
  CHECK_CUDA(cudaMalloc(&d_indices, std::max<size_t>(1, indices.size()) * 4));
  CHECK_CUDA(cudaMalloc(&d_last, last.size() * 4));
  CHECK_CUDA(cudaMemcpy(d_indptr, indptr.data(), indptr.size() * 4, cudaMemcpyHostToDevice));
  CHECK_CUDA(cudaMemcpy(d_indices, indices.data(), indices.size() * 4, cudaMemcpyHostToDevice));
  CHECK_CUDA(cudaMemcpy(d_last, last.data(), last.size() * 4, cudaMemcpyHostToDevice));
  DecodePlanOptions opt;
  opt.max_rows = rows;
  opt.max_work_items = std::max(rows * 2, 8192);
  opt.group_size = kHq / kHkv;
  opt.head_dim = kD;
  void* ws = nullptr;
  CHECK_CUDA(cudaMalloc(&ws, DecodeWorkspaceBytes(opt)));
  DecodePlan plan;
  CHECK_CUDA(
      PlanDecodeAttention(opt, indptr.data(), last.data(), rows, kBlock, ws, nullptr, &plan));
  auto run = [&](int i) {
    const size_t off = static_cast<size_t>(i % copies) * pool_elems * 2;
    const PagedKvView view{d_indptr,
                           d_indices,
                           d_last,
                           static_cast<char*>(k) + off,
                           static_cast<char*>(v) + off,
                           kBlock * kD,
                           kBlock,
                           kHkv,
                           kD};
    CHECK_CUDA(RunDecodeAttention(plan, view, DType::kBf16, q, kHq * kD, out, kHq * kD,
                                  1.0f / std::sqrt(static_cast<float>(kD)), nullptr));
  };
  const double ms = MedianMs(copies + 3, 50, run);
  const int64_t longest = *std::max_element(lens.begin(), lens.end());
  std::printf(
      "{\"kind\": \"%s\", \"batch\": %d, \"rows\": %d, \"tokens\": %lld, \"max_len\": %lld, "
      "\"bytes\": %lld, \"ms\": %.5f, \"tbps\": %.4f, \"work_items\": %d, \"chunk\": %d}\n",
      label, seqs, rows, static_cast<long long>(tokens), static_cast<long long>(longest),
      static_cast<long long>(bytes), ms, bytes / ms / 1e9, plan.num_work_items, plan.chunk_tokens);
  return 0;
}

int Prefill(int32_t n, const std::string& kernel) {
  void* q = RandomDevice(static_cast<size_t>(n) * kHq * kD, 5);
  void* k = RandomDevice(static_cast<size_t>(n) * kHkv * kD, 6);
  void* v = RandomDevice(static_cast<size_t>(n) * kHkv * kD, 7);
  void* out = nullptr;
  CHECK_CUDA(cudaMalloc(&out, static_cast<size_t>(n) * kHq * kD * 2));
  int32_t* cu = nullptr;
  const int32_t h_cu[2] = {0, n};
  CHECK_CUDA(cudaMalloc(&cu, 8));
  CHECK_CUDA(cudaMemcpy(cu, h_cu, 8, cudaMemcpyHostToDevice));
  PrefillAttentionArgs a;
  a.q = q;
  a.k = k;
  a.v = v;
  a.out = out;
  a.q_stride = a.out_stride = kHq * kD;
  a.kv_stride = kHkv * kD;
  a.cu_seqlens = cu;
  a.num_seqs = 1;
  a.max_q_len = n;
  a.num_q_heads = kHq;
  a.num_kv_heads = kHkv;
  a.head_dim = kD;
  a.scale = 1.0f / std::sqrt(static_cast<float>(kD));
  a.total_q = n;
  a.kernel = kernel == "mma"            ? PrefillKernel::kMmaSync
             : kernel == "wgmma"        ? PrefillKernel::kWgmma
             : kernel == "wgmma_serial" ? PrefillKernel::kWgmmaSerial
                                        : PrefillKernel::kAuto;
  const double ms = MedianMs(2, 10, [&](int) { CHECK_CUDA(RunPrefillAttention(a, nullptr)); });
  const double flops = 4.0 * kD * kHq * (static_cast<double>(n) * (n + 1) / 2);
  std::printf(
      "{\"kind\": \"prefill\", \"kernel\": \"%s\", \"tokens\": %d, \"ms\": %.4f, "
      "\"tflops\": %.2f}\n",
      kernel.c_str(), n, ms, flops / ms / 1e9);
  return 0;
}

// Adaptive: AdaKV's split of kHkv * cap tokens over the heads (floor 20%), packed blocks.
int Select(int32_t n, int32_t cap, bool adaptive) {
  constexpr int32_t kWindow = 8;
  void* q = RandomDevice(static_cast<size_t>(kWindow) * kHq * kD, 8);
  void* k = RandomDevice(static_cast<size_t>(n) * kHkv * kD, 9);
  void* v = RandomDevice(static_cast<size_t>(n) * kHkv * kD, 10);
  const int32_t kept = std::min(cap, n - kWindow) + kWindow;
  const int64_t total = std::min<int64_t>(int64_t{kHkv} * cap, int64_t{kHkv} * (n - kWindow));
  const int32_t reserved =
      static_cast<int32_t>((total + kHkv * (kWindow + kBlock - 1)) / kBlock);  // adaptive bound
  const int32_t nb = (kept + kBlock - 1) / kBlock;
  std::vector<int32_t> indptr{0},
      indices(std::max<size_t>(static_cast<size_t>(nb) * kHkv, static_cast<size_t>(reserved))),
      caps(kHkv, cap);
  std::iota(indices.begin(), indices.end(), 0);
  for (int32_t h = 0; h < kHkv; ++h) indptr.push_back((h + 1) * nb);
  int32_t *d_indptr, *d_indices, *d_caps, *count, *kept_idx;
  CHECK_CUDA(cudaMalloc(&d_indptr, indptr.size() * 4));
  CHECK_CUDA(cudaMalloc(&d_indices, indices.size() * 4));
  CHECK_CUDA(cudaMalloc(&d_caps, kHkv * 4));
  CHECK_CUDA(cudaMalloc(&count, kHkv * 4));
  CHECK_CUDA(cudaMalloc(&kept_idx, static_cast<size_t>(kHkv) * n * 4));
  CHECK_CUDA(cudaMemcpy(d_indptr, indptr.data(), indptr.size() * 4, cudaMemcpyHostToDevice));
  CHECK_CUDA(cudaMemcpy(d_indices, indices.data(), indices.size() * 4, cudaMemcpyHostToDevice));
  CHECK_CUDA(cudaMemcpy(d_caps, caps.data(), kHkv * 4, cudaMemcpyHostToDevice));
  void *kp, *vp, *ws;
  CHECK_CUDA(cudaMalloc(&kp, indices.size() * kBlock * kD * 2));
  CHECK_CUDA(cudaMalloc(&vp, indices.size() * kBlock * kD * 2));
  CHECK_CUDA(cudaMalloc(&ws, KvSelectWorkspaceBytes(n, kWindow, kHq, kHkv)));
  KvSelectArgs a;
  a.q_window = q;
  a.keys = k;
  a.values = v;
  a.q_stride = kHq * kD;
  a.kv_stride = kHkv * kD;
  a.n = n;
  a.window = kWindow;
  a.num_q_heads = kHq;
  a.num_kv_heads = kHkv;
  a.head_dim = kD;
  a.scale = 1.0f / std::sqrt(static_cast<float>(kD));
  a.caps = d_caps;
  a.dest_indptr = d_indptr;
  a.dest_indices = d_indices;
  a.k_pool = kp;
  a.v_pool = vp;
  a.block_stride = kBlock * kD;
  a.block_size = kBlock;
  a.workspace = ws;
  a.kept_count = count;
  a.kept_index = kept_idx;
  int32_t* ada_caps = nullptr;
  if (adaptive) {
    CHECK_CUDA(cudaMalloc(&ada_caps, kHkv * 4));
    a.adaptive_total = total;
    a.adaptive_floor = static_cast<int32_t>(
        std::min<double>(n - kWindow, std::floor(0.2 * cap)));  // alpha * budget / H
    a.dest_capacity = reserved;
    a.caps_out = ada_caps;
  }
  const double ms = MedianMs(2, 10, [&](int) { CHECK_CUDA(RunKvSelect(a, nullptr)); });
  std::printf("{\"kind\": \"%s\", \"tokens\": %d, \"cap\": %d, \"ms\": %.4f}\n",
              adaptive ? "adaselect" : "select", n, cap, ms);
  return 0;
}

}  // namespace
}  // namespace hkv::kernels

namespace hkv::kernels {
// Skinny linear layer c[m, n] = a[m, k] w[n, k]^T: hkv's Gemv and cuBLAS on the same data.
// Weights are rotated over copies totalling >= 1 GB so each call reads them from HBM.
int Linear(int32_t m, int32_t n, int32_t k) {
  const size_t wn = static_cast<size_t>(n) * k;
  const int copies = static_cast<int>(std::max<size_t>(1, (1ULL << 30) / (wn * 2) + 1));
  std::vector<void*> ws;
  for (int i = 0; i < copies; ++i) ws.push_back(RandomDevice(wn, 7 + i));
  void* a = RandomDevice(static_cast<size_t>(m) * k, 3);
  void* c = nullptr;
  CHECK_CUDA(cudaMalloc(&c, static_cast<size_t>(m) * n * 2));
  cublasHandle_t h;
  if (cublasCreate(&h) != CUBLAS_STATUS_SUCCESS) return 1;
  const double hkv_ms = MedianMs(5, 30, [&](int i) {
    CHECK_CUDA(Gemv(DType::kBf16, a, k, ws[i % copies], k, c, n, false, m, n, k, nullptr));
  });
  const double cublas_ms = MedianMs(5, 30, [&](int i) {
    if (GemmRowMajor(h, DType::kBf16, a, k, ws[i % copies], k, c, n, false, m, n, k) !=
        CUBLAS_STATUS_SUCCESS) {
      std::exit(1);
    }
  });
  const double bytes = 2.0 * (wn + static_cast<double>(m) * (k + n));
  std::printf(
      "{\"kind\": \"linear\", \"m\": %d, \"n\": %d, \"k\": %d, \"hkv_ms\": %.4f, "
      "\"cublas_ms\": %.4f, \"hkv_tbps\": %.3f, \"cublas_tbps\": %.3f}\n",
      m, n, k, hkv_ms, cublas_ms, bytes / hkv_ms / 1e9, bytes / cublas_ms / 1e9);
  cublasDestroy(h);
  return 0;
}

// One fused decode product on Llama-3-8B's shape (gemv_fused.h) against the kernels it
// replaces: qkv = RmsNorm + Gemv, gate_up = RmsNorm + GemvSwiGlu, o / down = Gemv (whose
// residual add the next RmsNorm did). Weights rotated over >= 1 GB as in Linear.
int Fused(const std::string& kind, int32_t m, int32_t cols) {
  const int32_t dim = 4096, hid = 14336;
  int32_t n = 0, k = dim, rows = 0;  // rows: weight rows read
  if (kind == "qkv") n = rows = (kHq + 2 * kHkv) * kD;
  if (kind == "o") n = rows = kHq * kD;
  if (kind == "gate_up") n = hid, rows = 2 * hid;
  if (kind == "down") n = rows = dim, k = hid;
  if (n == 0 || !FusedGemvApplies(DType::kBf16, m, k, kind == "qkv" || kind == "gate_up")) {
    std::fprintf(stderr, "fused: unknown kind %s or unsupported m %d\n", kind.c_str(), m);
    return 2;
  }
  const size_t wn = static_cast<size_t>(rows) * k;
  const int copies = static_cast<int>(std::max<size_t>(1, (1ULL << 30) / (wn * 2) + 1));
  std::vector<void*> ws;
  for (int i = 0; i < copies; ++i) ws.push_back(RandomDevice(wn, 7 + i));
  void* x = RandomDevice(static_cast<size_t>(m) * k, 3);
  void* norm_w = RandomDevice(k, 4);
  void* xb = RandomDevice(static_cast<size_t>(m) * k, 5);
  void* out = RandomDevice(static_cast<size_t>(m) * n, 6);
  const float eps = 1e-5f;
  const DType t = DType::kBf16;
  const double fused_ms = MedianMs(5, 30, [&](int i) {
    void* w = ws[i % copies];
    if (kind == "qkv") {
      CHECK_CUDA(RmsNormGemv(t, x, k, norm_w, eps, w, k, out, n, m, n, k, cols, nullptr));
    } else if (kind == "gate_up") {
      CHECK_CUDA(RmsNormGemvSwiGlu(t, x, k, norm_w, eps, w, k, out, n, m, n, k, cols, nullptr));
    } else {
      CHECK_CUDA(GemvAddResidual(t, x, k, w, k, out, n, m, n, k, cols, nullptr));
    }
  });
  const double unfused_ms = MedianMs(5, 30, [&](int i) {
    void* w = ws[i % copies];
    if (kind == "qkv" || kind == "gate_up") {
      CHECK_CUDA(RmsNorm(t, x, nullptr, norm_w, xb, m, k, eps, nullptr));
      CHECK_CUDA(kind == "qkv" ? Gemv(t, xb, k, w, k, out, n, false, m, n, k, nullptr)
                               : GemvSwiGlu(t, xb, k, w, k, out, n, m, n, k, nullptr));
    } else {
      CHECK_CUDA(Gemv(t, x, k, w, k, out, n, false, m, n, k, nullptr));
    }
  });
  const double bytes = 2.0 * wn;
  std::printf(
      "{\"kind\": \"fused_%s\", \"m\": %d, \"cols\": %d, \"n\": %d, \"k\": %d, "
      "\"fused_ms\": %.4f, \"unfused_ms\": %.4f, \"fused_tbps\": %.3f, "
      "\"unfused_tbps\": %.3f}\n",
      kind.c_str(), m, cols, n, k, fused_ms, unfused_ms, bytes / fused_ms / 1e9,
      bytes / unfused_ms / 1e9);
  return 0;
}

}  // namespace hkv::kernels

int main(int argc, char** argv) {
  using namespace hkv::kernels;
  const std::string mode = argc > 1 ? argv[1] : "";
  if (mode == "decode" && argc == 4) {
    const int32_t batch = std::atoi(argv[2]);
    const int64_t ctx = std::atoll(argv[3]);
    return Decode(std::vector<int64_t>(static_cast<size_t>(batch) * kHkv, ctx), "decode");
  }
  if (mode == "decode_lens" && argc == 3) {
    std::ifstream f(argv[2]);
    std::vector<int64_t> lens;
    for (int64_t x; f >> x;) lens.push_back(x);
    if (lens.empty() || lens.size() % kHkv != 0) {
      std::fprintf(stderr, "%s: need a multiple of %d lengths\n", argv[2], kHkv);
      return 2;
    }
    return Decode(lens, "decode_lens");
  }
  if (mode == "linear" && argc == 5) {
    return hkv::kernels::Linear(std::atoi(argv[2]), std::atoi(argv[3]), std::atoi(argv[4]));
  }
  if (mode == "prefill" && (argc == 3 || argc == 4)) {
    return Prefill(std::atoi(argv[2]), argc == 4 ? argv[3] : "auto");
  }
  if (mode == "fused" && argc == 5) {
    return hkv::kernels::Fused(argv[2], std::atoi(argv[3]), std::atoi(argv[4]));
  }
  if (mode == "select" && argc == 4) return Select(std::atoi(argv[2]), std::atoi(argv[3]), false);
  if (mode == "adaselect" && argc == 4) {
    return Select(std::atoi(argv[2]), std::atoi(argv[3]), true);
  }
  std::fprintf(stderr,
               "usage: kernel_bench decode B L | decode_lens FILE | prefill N "
               "[auto|mma|wgmma|wgmma_serial] | select N CAP | adaselect N CAP | linear M N K | "
               "fused qkv|o|gate_up|down M COLS\n");
  return 2;
}
