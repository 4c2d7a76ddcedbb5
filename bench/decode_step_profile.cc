// One decode step of the CUDA worker, phase by phase: drives CudaWorker::Execute (the real
// step, random bf16 weights made on the GPU as --dummy-weights does) on B sequences of a fixed
// context, and prints per batch size and kernel set (fused / unfused) a markdown table of the
// forward pass's phases (calls, us per step, share, GB/s of the weights or K/V they read), the
// whole step timed with CUDA graphs and eagerly (host time included: Execute returns once the
// step's tokens are on the host), and the bound: bytes one step must read / the measured
// device-to-device copy bandwidth.
//
//   decode_step_profile [--config DIR] [--batch 1,64] [--context 1024] [--steps 50]
//                       [--mode both|fused|unfused] [--gemv_cols QKV,O,GATE_UP,DOWN]
//                       [--headkv SCORES_JSON] [--budget 128] [--prefill N,P]
//                       [--rope_kv_append 1|0] [--kv_stages 0|2|3|4]
//
// --mode picks the workers: one with CudaWorkerOptions::fused_decode off (the default kernels)
// and/or one with it on. --gemv_cols sets the fused worker's options.fused_gemv_cols (the fused
// products' columns per warp: 1, 2 or 4 each). --rope_kv_append 0 turns the unfused worker's
// CudaWorkerOptions::fused_rope_kv_append off (Rope, then AppendKvSlots); --kv_stages sets
// CudaWorkerOptions::decode_kv_stages (0: decode attention loads K/V into registers). Phase times
// come from events between kernels (workers/cuda/phase_timer.h) and add up to more than an
// unprofiled eager step. CUDA builds only.
// --headkv gives every row the length a HeadKV-B plan of those scores keeps of a `context`-token
// prompt (KeptTokens: cap + window per (layer, KV head)) instead of `context`: the ragged rows
// whose layers differ, so the worker plans decode attention per layer as a HeadKV decode does.
// --prefill N,P adds to every step N prompts of P tokens prefilled in one step, as the steps of
// a short-context serving mix carry them: with --headkv each is a compressed prefill (dense
// attention, then the selection kernels keep the plan's tokens per row), else a plain one.
// Such steps run eagerly (no graph), so their graph and eager times are the same step.

#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "common/batch.h"
#include "common/paths.h"
#include "common/status_macros.h"
#include "headkv/head_budget_planner.h"
#include "headkv/head_scores.h"
#include "headkv/kv_policy.h"
#include "model/hf_config.h"
#include "model/model_config.h"
#include "workers/cuda/cuda_worker.h"

namespace hkv {
namespace {

struct Flags {
  std::string config;
  std::vector<int32_t> batches = {1, 64};
  int32_t context = 1024;
  int32_t steps = 50;
  std::string mode = "both";
  std::string gemv_cols;  // as given, for the header line
  FusedGemvCols cols;
  std::string headkv_scores;  // empty: full KV, every row `context` tokens
  int32_t budget = 128;
  int32_t prefill_seqs = 0;  // --prefill N,P
  int32_t prefill_len = 0;
  bool rope_kv_append = true;                      // CudaWorkerOptions::fused_rope_kv_append
  int32_t kv_stages = kCudaDefaultDecodeKvStages;  // CudaWorkerOptions::decode_kv_stages
};

bool ParseFlags(int argc, char** argv, Flags* f) {
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i], v = argv[i + 1];
    if (k == "--config") {
      f->config = v;
    } else if (k == "--batch") {
      f->batches.clear();
      for (absl::string_view s : absl::StrSplit(v, ',')) {
        int32_t b = 0;
        if (!absl::SimpleAtoi(s, &b) || b < 1) return false;
        f->batches.push_back(b);
      }
    } else if (k == "--context") {
      if (!absl::SimpleAtoi(v, &f->context) || f->context < 1) return false;
    } else if (k == "--steps") {
      if (!absl::SimpleAtoi(v, &f->steps) || f->steps < 1) return false;
    } else if (k == "--mode") {
      f->mode = v;
      if (v != "both" && v != "fused" && v != "unfused") return false;
    } else if (k == "--rope_kv_append") {
      if (v != "0" && v != "1") return false;
      f->rope_kv_append = v == "1";
    } else if (k == "--kv_stages") {
      if (!absl::SimpleAtoi(v, &f->kv_stages)) return false;
    } else if (k == "--headkv") {
      f->headkv_scores = v;
    } else if (k == "--prefill") {
      const std::vector<std::string> np = absl::StrSplit(v, ',');
      if (np.size() != 2 || !absl::SimpleAtoi(np[0], &f->prefill_seqs) ||
          !absl::SimpleAtoi(np[1], &f->prefill_len) || f->prefill_seqs < 1 || f->prefill_len < 16) {
        return false;
      }
    } else if (k == "--budget") {
      if (!absl::SimpleAtoi(v, &f->budget) || f->budget < 9) return false;
    } else if (k == "--gemv_cols") {
      f->gemv_cols = v;
      std::vector<int32_t> c;
      for (absl::string_view x : absl::StrSplit(v, ',')) {
        int32_t n = 0;
        if (!absl::SimpleAtoi(x, &n) || (n != 1 && n != 2 && n != 4)) return false;
        c.push_back(n);
      }
      if (c.size() != 4) return false;
      f->cols = {c[0], c[1], c[2], c[3]};
    } else {
      return false;
    }
  }
  return argc % 2 == 1;
}

// The prompts --prefill adds to a step: each prefilled in one step, compressed by `plan`
// when it is set. Its rows take fresh blocks after `*next`.
struct PrefillMix {
  int32_t seqs = 0;
  int32_t len = 0;
  const HeadBudgetPlan* plan = nullptr;
};

// A decode step of `batch` sequences; row r of each holds row_len[r] cached tokens
// (r = layer * num_kv_heads + head); then the mix's prompts.
Batch DecodeBatch(const ModelConfig& c, int32_t batch, const std::vector<int32_t>& row_len,
                  int32_t block_size, const PrefillMix& mix = {}) {
  Batch b;
  b.num_layers = c.num_layers;
  b.num_kv_heads = c.num_kv_heads;
  b.block_size = block_size;
  b.kv_indptr = {0};
  const int32_t context = *std::max_element(row_len.begin(), row_len.end());
  int32_t next = 0;
  for (int32_t s = 0; s < batch; ++s) {
    SequenceStep st;
    st.id = s;
    st.tokens = {1000 + s};
    st.start_pos = context;
    st.sample = true;
    st.num_prompt_tokens = context;
    b.seqs.push_back(st);
    for (int64_t r = 0; r < static_cast<int64_t>(c.num_layers) * c.num_kv_heads; ++r) {
      const int32_t blocks = (row_len[r] + 1 + block_size - 1) / block_size;
      for (int32_t i = 0; i < blocks; ++i) b.kv_indices.push_back(next++);
      b.kv_indptr.push_back(static_cast<int32_t>(b.kv_indices.size()));
      b.kv_len_before.push_back(row_len[r]);
      b.kv_len_after.push_back(row_len[r] + 1);
    }
  }
  const std::vector<int32_t> kept =
      mix.plan != nullptr ? mix.plan->KeptTokens(mix.len) : std::vector<int32_t>();
  for (int32_t s = 0; s < mix.seqs; ++s) {
    SequenceStep st;
    st.id = batch + s;
    for (int32_t i = 0; i < mix.len; ++i) st.tokens.push_back(100 + (s * 7919 + i * 31) % 20000);
    st.sample = true;
    st.num_prompt_tokens = mix.len;
    if (mix.plan != nullptr) {
      st.select = true;
      st.selection.window = mix.plan->window;
      st.selection.capacity = mix.plan->capacity;
    }
    b.seqs.push_back(st);
    for (int64_t r = 0; r < static_cast<int64_t>(c.num_layers) * c.num_kv_heads; ++r) {
      const int32_t len = mix.plan != nullptr ? kept[r] : mix.len;
      for (int32_t i = 0; i < (len + block_size - 1) / block_size; ++i) {
        b.kv_indices.push_back(next++);
      }
      b.kv_indptr.push_back(static_cast<int32_t>(b.kv_indices.size()));
      b.kv_len_before.push_back(0);
      b.kv_len_after.push_back(len);
    }
  }
  return b;
}

// Device-to-device copy bandwidth (bytes read + written per second) over 1 GiB.
double CopyBandwidth() {
  const size_t n = size_t{1} << 30;
  void *a = nullptr, *b = nullptr;
  if (cudaMalloc(&a, n) != cudaSuccess || cudaMalloc(&b, n) != cudaSuccess) return 0;
  cudaEvent_t e0, e1;
  cudaEventCreate(&e0);
  cudaEventCreate(&e1);
  cudaMemcpy(b, a, n, cudaMemcpyDeviceToDevice);
  cudaEventRecord(e0);
  const int reps = 10;
  for (int i = 0; i < reps; ++i) cudaMemcpyAsync(b, a, n, cudaMemcpyDeviceToDevice);
  cudaEventRecord(e1);
  cudaEventSynchronize(e1);
  float ms = 0;
  cudaEventElapsedTime(&ms, e0, e1);
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  cudaFree(a);
  cudaFree(b);
  return 2.0 * n * reps / (ms * 1e-3);
}

// Mean wall time of one Execute, in us, after two warm-up steps.
absl::StatusOr<double> TimeSteps(CudaWorker& w, const Batch& b, int32_t steps) {
  for (int i = 0; i < 2; ++i) HKV_RETURN_IF_ERROR(w.Execute(b).status());
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < steps; ++i) HKV_RETURN_IF_ERROR(w.Execute(b).status());
  return std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count() /
         steps;
}

// Bytes of weights (per step, all layers) a phase reads; 0 when it reads none of note.
double PhaseBytes(const std::string& name, const ModelConfig& c, double kv_bytes) {
  const double L = c.num_layers, e = 2;
  auto has = [&](const char* s) { return name.find(s) != std::string::npos; };
  if (has("qkv")) return L * e * c.dim * (c.q_size() + 2.0 * c.kv_size());
  if (has("o_proj")) return L * e * c.q_size() * c.dim;
  if (has("gate_up")) return L * e * 2.0 * c.hidden_dim * c.dim;
  if (has("down_proj")) return L * e * c.hidden_dim * c.dim;
  if (has("lm_head")) return e * static_cast<double>(c.vocab_size) * c.dim;
  if (has("decode_attention")) return kv_bytes;
  return 0;
}

absl::Status Profile(CudaWorker& w, const ModelConfig& c, const Flags& f,
                     const std::vector<int32_t>& row_len, const PrefillMix& mix, int32_t batch,
                     bool fused, double copy_bw) {
  const Batch b = DecodeBatch(c, batch, row_len, 16, mix);
  w.set_phase_profile(false);
  w.set_graphs_enabled(true);
  HKV_ASSIGN_OR_RETURN(const double graph_us, TimeSteps(w, b, f.steps));
  w.set_graphs_enabled(false);
  HKV_ASSIGN_OR_RETURN(const double eager_us, TimeSteps(w, b, f.steps));
  w.set_phase_profile(true);
  for (int i = 0; i < f.steps; ++i) HKV_RETURN_IF_ERROR(w.Execute(b).status());
  const std::vector<CudaWorker::PhaseTime> phases = w.phase_profile();
  w.set_phase_profile(false);
  w.set_graphs_enabled(true);

  const double L = c.num_layers;
  const double weights =
      L * 2.0 *
          (static_cast<double>(c.dim) * (c.q_size() + 2.0 * c.kv_size()) +
           static_cast<double>(c.q_size()) * c.dim + 3.0 * c.hidden_dim * c.dim) +
      2.0 * c.vocab_size * c.dim;
  double row_tokens = 0;  // over one sequence's rows, the decode token included
  for (int32_t n : row_len) row_tokens += n + 1.0;
  const double kv = 2.0 * 2.0 * batch * row_tokens * c.head_dim;
  const double bound_us = (weights + kv) / copy_bw * 1e6;
  double total = 0;
  for (const auto& p : phases) total += p.us_per_step;
  std::printf(
      "\n### batch %d, context %d, %s, %s kernels%s\n\n", batch, f.context,
      f.headkv_scores.empty() ? "full KV" : ("HeadKV B=" + std::to_string(f.budget)).c_str(),
      fused ? "fused" : "unfused",
      mix.seqs == 0 ? ""
                    : (", + " + std::to_string(mix.seqs) + " prompts of " +
                       std::to_string(mix.len) + " tokens (bound: decode only)")
                          .c_str());
  std::printf(
      "Step: graph %.1f us (%.1f tok/s per sequence, %.0f%% of the bound), eager %.1f us; "
      "bound %.1f us = %.2f GB / %.2f TB/s copy bandwidth. Profiled eager phases sum to %.1f "
      "us.\n\n",
      graph_us, 1e6 / graph_us, 100.0 * bound_us / graph_us, eager_us, bound_us,
      (weights + kv) * 1e-9, copy_bw * 1e-12, total);
  std::printf("| phase | calls/step | us/step | share | GB/s |\n|---|---|---|---|---|\n");
  for (const auto& p : phases) {
    const double bytes = PhaseBytes(p.name, c, kv);
    char bw[32] = "-";
    if (bytes > 0 && p.us_per_step > 0) {
      std::snprintf(bw, sizeof(bw), "%.0f", bytes / (p.us_per_step * 1e-6) * 1e-9);
    }
    std::printf("| %s | %.0f | %.1f | %.1f%% | %s |\n", p.name.c_str(), p.calls_per_step,
                p.us_per_step, 100.0 * p.us_per_step / std::max(total, 1e-9), bw);
  }
  std::fflush(stdout);
  return absl::OkStatus();
}

absl::Status Run(const Flags& f) {
  const std::string dir =
      f.config.empty() ? SourceDir() + "/bench/configs/Meta-Llama-3-8B-Instruct" : f.config;
  HKV_ASSIGN_OR_RETURN(ModelConfig config, LoadHfConfig(dir));
  HKV_RETURN_IF_ERROR(ValidateModelConfig(config));
  auto model = std::make_shared<Model>();
  model->config = config;
  model->device_dummy_seed = 0;
  const int32_t max_batch = *std::max_element(f.batches.begin(), f.batches.end());
  std::vector<int32_t> row_len(static_cast<size_t>(config.num_layers) * config.num_kv_heads,
                               f.context);
  std::optional<HeadBudgetPlan> headkv_plan;
  if (!f.headkv_scores.empty()) {
    HKV_ASSIGN_OR_RETURN(HeadScores scores, LoadHeadScores(f.headkv_scores));
    KvPolicy policy;
    policy.name = KvPolicyName::kHeadKv;
    policy.budget = f.budget;
    policy.scores = std::make_shared<const HeadScores>(std::move(scores));
    HKV_ASSIGN_OR_RETURN(const HeadBudgetPlan plan,
                         HeadBudgetPlanner::Plan(policy, config.num_layers, config.num_kv_heads));
    row_len = plan.KeptTokens(f.context);
    headkv_plan = plan;
  }
  PrefillMix mix{f.prefill_seqs, f.prefill_len, headkv_plan ? &*headkv_plan : nullptr};
  int64_t blocks_per_seq = 0;
  for (int32_t n : row_len) blocks_per_seq += (n + 1 + 15) / 16;
  const int64_t blocks_per_prompt =
      static_cast<int64_t>(config.num_layers) * config.num_kv_heads * ((f.prefill_len + 15) / 16);
  CudaWorkerOptions o;
  o.block_size = 16;
  o.num_blocks = blocks_per_seq * max_batch + blocks_per_prompt * f.prefill_seqs;
  o.max_step_tokens = std::max(max_batch + f.prefill_seqs * f.prefill_len, 8192);
  o.max_seqs = std::max(max_batch + f.prefill_seqs, 256);
  o.cuda_graph_max_batch = std::max(max_batch, 256);
  o.fused_gemv_cols = f.cols;
  o.fused_rope_kv_append = f.rope_kv_append;
  o.decode_kv_stages = f.kv_stages;  // CudaWorker::Create refuses values it does not serve
  const double copy_bw = CopyBandwidth();
  int dev = 0;
  cudaDeviceProp prop;
  cudaGetDevice(&dev);
  cudaGetDeviceProperties(&prop, dev);
  int driver = 0;
  cudaDriverGetVersion(&driver);
  std::printf(
      "## decode_step_profile: %s, %s (%d SMs), driver API %d, gemv_cols=%s, rope_kv_append=%d, "
      "kv_stages=%d\n",
      config.name.c_str(), prop.name, prop.multiProcessorCount, driver,
      f.gemv_cols.empty() ? "default" : f.gemv_cols.c_str(), f.rope_kv_append ? 1 : 0, f.kv_stages);
  for (const bool fused : {false, true}) {
    if (f.mode == (fused ? "unfused" : "fused")) continue;
    o.fused_decode = fused;  // one worker per kernel set, as a server would start it
    HKV_ASSIGN_OR_RETURN(std::unique_ptr<CudaWorker> w, CudaWorker::Create(model, o));
    for (int32_t batch : f.batches) {
      HKV_RETURN_IF_ERROR(Profile(*w, config, f, row_len, mix, batch, fused, copy_bw));
    }
  }
  return absl::OkStatus();
}

}  // namespace
}  // namespace hkv

int main(int argc, char** argv) {
  hkv::Flags f;
  if (!hkv::ParseFlags(argc, argv, &f)) {
    std::fprintf(stderr,
                 "usage: decode_step_profile [--config DIR] [--batch 1,64] [--context 1024] "
                 "[--steps 50] [--mode both|fused|unfused] [--gemv_cols QKV,O,GATE_UP,DOWN] "
                 "[--headkv SCORES_JSON] [--budget 128] [--prefill N,P] [--rope_kv_append 1|0] "
                 "[--kv_stages 0|2|3|4]\n");
    return 2;
  }
  const absl::Status s = hkv::Run(f);
  if (!s.ok()) {
    std::fprintf(stderr, "decode_step_profile: %s\n", s.ToString().c_str());
    return 1;
  }
  return 0;
}
