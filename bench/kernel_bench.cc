// Kernel benchmark: times hkv's CUDA kernels on Llama-3-8B attention shapes (32 query heads,
// 8 KV heads, head_dim 128, bf16) and prints one JSON object per run on stdout.
// bench/run_kernel_bench.py runs it next to PyTorch on the same shapes and prints the table.
//
//   kernel_bench decode  <batch> <context> [FLAGS]   uniform lengths (every head full)
//   kernel_bench decode_lens <file> [FLAGS]          one row length per line, rows (seq, kv_head)
//     FLAGS (bench only; the engine runs decode_attention.h with its defaults):
//       --kernel decode_attention|single_launch   decode_attention.h (default) or
//                                                 single_launch_decode_attention.h; with the
//                                                 latter, its SingleLaunchDecodeOptions:
//       --variant w4u4|w4u4p|w4u8|w8u4|w8u4p|w8u8  cta_threads, loads_in_flight, prefetch at once
//       --threads 128|256, --loads 4|8, --prefetch  cta_threads, loads_in_flight, prefetch
//       --items-per-cta N, --min-split N, --split N  items_per_cta, min_split_tokens, split_tokens
//       --ctas-per-sm N                             ctas_per_sm (0..64)
//       --device-plan                               the GPU planner,
//                                                 PlanSingleLaunchDecodeAttentionOnDevice
//       --kv-stages 0|2|3|4                         decode_attention only: DecodePlanOptions::
//                                                 kv_stages (0: loads into registers)
//     N = 0 keeps the kernel's default, as in the options struct.
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
// caches are replicated and rotated so the timed reads come from HBM, not L2. Decode rows also
// give ms_chain: the per-call time of 32 calls issued back to back, as a step's layers issue
// them (launch latency overlaps the previous call).
//
// Arguments are checked before any CUDA call: bad ones print the usage and exit 2; without a
// CUDA device it says so and exits 1.

#include <cuda_runtime.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "bench/cuda_bench_util.h"
#include "kernels/decode_attention.h"
#include "kernels/gemm.h"
#include "kernels/gemv.h"
#include "kernels/gemv_fused.h"
#include "kernels/kv_select.h"
#include "kernels/layer_ops.h"
#include "kernels/prefill_attention.h"
#include "kernels/single_launch_decode_attention.h"

namespace hkv::kernels {
namespace {

constexpr int32_t kHq = 32, kHkv = 8, kD = 128, kBlock = 16;

// Random data in [-1, 1) on the device.
void* RandomDevice(size_t n, uint32_t seed) { return bench::RandomBf16(n, seed, 0x3f00, 0x7f); }

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

// Which decode kernel a decode row times, and the single-launch kernel's tuning (bench only:
// the engine runs decode_attention.h with its defaults).
struct DecodeFlags {
  bool single_launch = false;      // --kernel single_launch
  SingleLaunchDecodeOptions tune;  // the tuning fields only; capacities are set by Decode
  bool device_plan = false;
  int32_t kv_stages = kDefaultKvStages;  // --kv-stages: DecodePlanOptions::kv_stages
};

// The single-launch variants (single_launch_decode_*.cu): warps per CTA, loads, prefetch.
struct DecodeVariant {
  const char* name;
  int32_t threads, loads;
  bool prefetch;
};
constexpr DecodeVariant kDecodeVariants[] = {
    {"w4u4", 128, 4, false}, {"w4u4p", 128, 4, true}, {"w4u8", 128, 8, false},
    {"w8u4", 256, 4, false}, {"w8u4p", 256, 4, true}, {"w8u8", 256, 8, false},
};

// The variant that RunSingleLaunchDecodeAttention launches for `o` (0 = its default).
const char* VariantName(const SingleLaunchDecodeOptions& o) {
  const int32_t threads = o.cta_threads == 256 ? 256 : 128;
  const int32_t loads = o.loads_in_flight == 8 ? 8 : 4;
  for (const DecodeVariant& v : kDecodeVariants) {
    if (v.threads == threads && v.loads == loads && v.prefetch == o.prefetch) return v.name;
  }
  return "?";
}

// Parses a whole decimal integer in [lo, hi]; false for anything else ("", "12x", "-3" < lo).
bool ParseInt(const char* s, int64_t lo, int64_t hi, int64_t* out) {
  if (s == nullptr || *s == '\0') return false;
  errno = 0;
  char* end = nullptr;
  const long long v = std::strtoll(s, &end, 10);
  if (errno != 0 || *end != '\0' || v < lo || v > hi) return false;
  *out = v;
  return true;
}

// Parses the decode flags in argv[first..] into *f. Returns "" or what is wrong.
std::string ParseDecodeFlags(int argc, char** argv, int first, DecodeFlags* f) {
  bool variant = false, threads = false, loads = false, prefetch = false, tuned = false;
  bool kv_stages = false;
  for (int i = first; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--device-plan" || a == "--prefetch") {
      (a == "--prefetch" ? f->tune.prefetch : f->device_plan) = true;
      prefetch = prefetch || a == "--prefetch";
      tuned = true;
      continue;
    }
    if (a != "--kernel" && a != "--variant" && a != "--threads" && a != "--loads" &&
        a != "--items-per-cta" && a != "--min-split" && a != "--split" && a != "--ctas-per-sm" &&
        a != "--kv-stages") {
      return "unknown decode flag '" + a + "'";
    }
    if (i + 1 >= argc) return a + " needs a value";
    const char* value = argv[++i];
    if (a == "--kernel") {
      if (std::strcmp(value, "single_launch") != 0 && std::strcmp(value, "decode_attention") != 0) {
        return "--kernel: expected decode_attention or single_launch, got '" + std::string(value) +
               "'";
      }
      f->single_launch = std::strcmp(value, "single_launch") == 0;
      continue;
    }
    if (a == "--kv-stages") {
      int64_t v = -1;
      if (!ParseInt(value, 0, kMaxKvStages, &v) || !ValidKvStages(static_cast<int32_t>(v))) {
        return "--kv-stages: expected 0 (registers) or 2.." + std::to_string(kMaxKvStages) +
               ", got '" + std::string(value) + "'";
      }
      f->kv_stages = static_cast<int32_t>(v);
      kv_stages = true;
      continue;
    }
    tuned = true;
    if (a == "--variant") {
      const DecodeVariant* found = nullptr;
      for (const DecodeVariant& v : kDecodeVariants) {
        if (std::strcmp(value, v.name) == 0) found = &v;
      }
      if (found == nullptr) {
        return "--variant: expected w4u4, w4u4p, w4u8, w8u4, w8u4p or w8u8, got '" +
               std::string(value) + "'";
      }
      f->tune.cta_threads = found->threads;
      f->tune.loads_in_flight = found->loads;
      f->tune.prefetch = found->prefetch;
      variant = true;
      continue;
    }
    int64_t v = 0;
    if (a == "--threads") {
      if (!ParseInt(value, 128, 256, &v) || (v != 128 && v != 256)) {
        return "--threads: expected 128 or 256, got '" + std::string(value) + "'";
      }
      f->tune.cta_threads = static_cast<int32_t>(v);
      threads = true;
    } else if (a == "--loads") {
      if (!ParseInt(value, 4, 8, &v) || (v != 4 && v != 8)) {
        return "--loads: expected 4 or 8, got '" + std::string(value) + "'";
      }
      f->tune.loads_in_flight = static_cast<int32_t>(v);
      loads = true;
    } else if (a == "--ctas-per-sm") {
      if (!ParseInt(value, 0, 64, &v)) {
        return "--ctas-per-sm: expected an integer 0..64 (0: default 4), got '" +
               std::string(value) + "'";
      }
      f->tune.ctas_per_sm = static_cast<int32_t>(v);
    } else {
      if (!ParseInt(value, 0, INT32_MAX, &v)) {
        return a + ": expected a non-negative integer (0: default), got '" + std::string(value) +
               "'";
      }
      (a == "--items-per-cta" ? f->tune.items_per_cta
       : a == "--min-split"   ? f->tune.min_split_tokens
                              : f->tune.split_tokens) = static_cast<int32_t>(v);
    }
  }
  if (tuned && !f->single_launch) {
    return "the tuning flags apply to --kernel single_launch only";
  }
  if (kv_stages && f->single_launch) return "--kv-stages applies to --kernel decode_attention";
  if (variant && (threads || loads || prefetch)) {
    return "--variant sets --threads, --loads and --prefetch; give either";
  }
  if (f->tune.prefetch && f->tune.loads_in_flight == 8) {
    return "--prefetch needs 4 loads in flight (there is no w4u8p or w8u8p variant)";
  }
  return "";
}

int Decode(const std::vector<int64_t>& lens, const char* label, const DecodeFlags& flags) {
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
  const float scale = 1.0f / std::sqrt(static_cast<float>(kD));
  int32_t items = 0, chunk = 0;
  std::string plan_json;  // the single-launch kernel's extra fields
  std::function<void(const PagedKvView&)> call;
  DecodePlan plan;
  SingleLaunchDecodePlan sl_plan;
  if (!flags.single_launch) {
    DecodePlanOptions opt;
    opt.max_rows = rows;
    opt.max_work_items = std::max(rows * 2, 8192);
    opt.group_size = kHq / kHkv;
    opt.head_dim = kD;
    opt.kv_stages = flags.kv_stages;
    void* ws = nullptr;
    CHECK_CUDA(cudaMalloc(&ws, DecodeWorkspaceBytes(opt)));
    CHECK_CUDA(
        PlanDecodeAttention(opt, indptr.data(), last.data(), rows, kBlock, ws, nullptr, &plan));
    items = plan.num_work_items;
    chunk = plan.chunk_tokens;
    plan_json = ", \"kv_stages\": " + std::to_string(opt.kv_stages);
    call = [&](const PagedKvView& view) {
      CHECK_CUDA(
          RunDecodeAttention(plan, view, DType::kBf16, q, kHq * kD, out, kHq * kD, scale, nullptr));
    };
  } else {
    SingleLaunchDecodeOptions opt = flags.tune;
    opt.max_rows = rows;
    // Room for every item of a fixed --split (the host planner refuses a list that overflows).
    int64_t split_items = 0;
    for (int64_t len : lens) {
      split_items += opt.split_tokens > 0 && len > opt.split_tokens
                         ? (len + opt.split_tokens - 1) / opt.split_tokens
                         : 1;
    }
    if (split_items > (1 << 22)) {
      std::fprintf(stderr, "--split %d: %lld work items, more than this bench allocates (2^22)\n",
                   opt.split_tokens, static_cast<long long>(split_items));
      return 2;
    }
    opt.max_work_items = static_cast<int32_t>(std::max<int64_t>({rows * 2, 8192, split_items}));
    opt.group_size = kHq / kHkv;
    opt.head_dim = kD;
    void* ws = nullptr;
    CHECK_CUDA(cudaMalloc(&ws, SingleLaunchDecodeWorkspaceBytes(opt)));
    int32_t ctas = 0;
    if (flags.device_plan) {
      CHECK_CUDA(PlanSingleLaunchDecodeAttentionOnDevice(opt, d_indptr, d_last, rows, kBlock, ws,
                                                         nullptr, &sl_plan));
      // The counts live on the device: words 0..3 of the work list (single_launch_decode_plan.h).
      int32_t header[4];
      CHECK_CUDA(cudaMemcpy(header, ws, sizeof(header), cudaMemcpyDeviceToHost));
      if (header[2] != 0) {
        std::fprintf(stderr, "device planner: %d malformed rows\n", header[2]);
        return 1;
      }
      items = header[0];
      ctas = header[1];
      chunk = header[3] > 0 ? header[3]
                            : static_cast<int32_t>(
                                  *std::max_element(lens.begin(), lens.end()));  // as the host plan
    } else {
      CHECK_CUDA(PlanSingleLaunchDecodeAttention(opt, indptr.data(), last.data(), rows, kBlock, ws,
                                                 nullptr, &sl_plan));
      items = sl_plan.num_work_items;
      ctas = sl_plan.num_ctas;
      chunk = sl_plan.chunk_tokens;
    }
    const int32_t grid = sl_plan.device_planned ? opt.max_work_items : sl_plan.num_ctas;
    char buf[512];
    std::snprintf(buf, sizeof(buf),
                  ", \"kernel\": \"single_launch\", \"variant\": \"%s\", \"ctas\": %d, "
                  "\"grid\": %d, \"threads\": %d, \"loads\": %d, \"prefetch\": %s, "
                  "\"items_per_cta\": %d, \"min_split\": %d, \"split\": %d, \"ctas_per_sm\": %d, "
                  "\"device_plan\": %s",
                  VariantName(opt), ctas, grid, opt.cta_threads, opt.loads_in_flight,
                  opt.prefetch ? "true" : "false", opt.items_per_cta, opt.min_split_tokens,
                  opt.split_tokens, opt.ctas_per_sm, flags.device_plan ? "true" : "false");
    plan_json = buf;
    call = [&](const PagedKvView& view) {
      CHECK_CUDA(RunSingleLaunchDecodeAttention(sl_plan, view, DType::kBf16, q, kHq * kD, out,
                                                kHq * kD, scale, nullptr));
    };
  }
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
    call(view);
  };
  const double ms = MedianMs(copies + 3, 50, run);
  // Calls back to back, as the layers of a decode step issue them: launch latency overlaps
  // the previous call.
  constexpr int kChain = 32;
  const double chain_ms = MedianMs(2, 10,
                                   [&](int i) {
                                     for (int j = 0; j < kChain; ++j) run(i * kChain + j);
                                   }) /
                          kChain;
  const int64_t longest = *std::max_element(lens.begin(), lens.end());
  std::printf(
      "{\"kind\": \"%s\", \"batch\": %d, \"rows\": %d, \"tokens\": %lld, \"max_len\": %lld, "
      "\"bytes\": %lld, \"ms\": %.5f, \"tbps\": %.4f, \"ms_chain\": %.5f, \"work_items\": %d, "
      "\"chunk\": %d%s}\n",
      label, seqs, rows, static_cast<long long>(tokens), static_cast<long long>(longest),
      static_cast<long long>(bytes), ms, bytes / ms / 1e9, chain_ms, items, chunk,
      plan_json.c_str());
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

namespace {

constexpr char kUsage[] =
    "usage: kernel_bench decode B L [decode flags] | decode_lens FILE [decode flags] | prefill N "
    "[auto|mma|wgmma|wgmma_serial] | select N CAP | adaselect N CAP | linear M N K | "
    "fused qkv|o|gate_up|down M COLS\n"
    "  decode flags: --kernel decode_attention|single_launch (default decode_attention); with\n"
    "    single_launch: --variant w4u4|w4u4p|w4u8|w8u4|w8u4p|w8u8 | --threads 128|256\n"
    "    --loads 4|8 --prefetch; --items-per-cta N --min-split N --split N (N >= 0, 0: default)\n"
    "    --ctas-per-sm N (0..64, 0: default 4) --device-plan; with decode_attention:\n"
    "    --kv-stages 0|2|3|4 (0: K/V loads into registers; default 2)\n";

int Usage(const std::string& error) {
  if (!error.empty()) std::fprintf(stderr, "kernel_bench: %s\n", error.c_str());
  std::fputs(kUsage, stderr);
  return 2;
}

// False, saying why, when there is no CUDA device to run on.
bool HaveGpu() {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess || n == 0) {
    std::fprintf(stderr, "kernel_bench: no CUDA device (%s)\n",
                 e != cudaSuccess ? cudaGetErrorString(e) : "none found");
    return false;
  }
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  using namespace hkv::kernels;
  const std::string mode = argc > 1 ? argv[1] : "";
  if ((mode == "decode" && argc >= 4) || (mode == "decode_lens" && argc >= 3)) {
    DecodeFlags flags;
    const std::string error = ParseDecodeFlags(argc, argv, mode == "decode" ? 4 : 3, &flags);
    if (!error.empty()) return Usage(error);
    std::vector<int64_t> lens;
    if (mode == "decode") {
      int64_t batch = 0, ctx = 0;
      if (!ParseInt(argv[2], 1, 1 << 20, &batch) || !ParseInt(argv[3], 1, INT32_MAX, &ctx) ||
          batch * kHkv * ((ctx + kBlock - 1) / kBlock) > INT32_MAX) {
        return Usage("decode: B and L must be positive integers (B * 8 * L / 16 pages < 2^31)");
      }
      lens.assign(static_cast<size_t>(batch) * kHkv, ctx);
    } else {
      std::ifstream f(argv[2]);
      if (!f) return Usage(std::string("decode_lens: cannot read ") + argv[2]);
      for (int64_t x; f >> x;) lens.push_back(x);
      if (lens.empty() || lens.size() % kHkv != 0 || !f.eof() ||
          *std::min_element(lens.begin(), lens.end()) < 0) {
        std::fprintf(stderr, "%s: need a multiple of %d lengths >= 0\n", argv[2], kHkv);
        return 2;
      }
    }
    if (!HaveGpu()) return 1;
    return Decode(lens, mode.c_str(), flags);
  }
  const bool known =
      (mode == "linear" && argc == 5) || (mode == "prefill" && (argc == 3 || argc == 4)) ||
      (mode == "fused" && argc == 5) || ((mode == "select" || mode == "adaselect") && argc == 4);
  if (!known) return Usage(mode.empty() ? "" : "bad arguments for '" + mode + "'");
  if (!HaveGpu()) return 1;
  if (mode == "linear") {
    return hkv::kernels::Linear(std::atoi(argv[2]), std::atoi(argv[3]), std::atoi(argv[4]));
  }
  if (mode == "prefill") return Prefill(std::atoi(argv[2]), argc == 4 ? argv[3] : "auto");
  if (mode == "fused") {
    return hkv::kernels::Fused(argv[2], std::atoi(argv[3]), std::atoi(argv[4]));
  }
  return Select(std::atoi(argv[2]), std::atoi(argv[3]), mode == "adaselect");
}
