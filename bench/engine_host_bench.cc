// Host overhead of one engine step, without a GPU: the real Engine, Scheduler and
// KvCacheManager at Llama-3-8B's shape (32 layers x 8 KV heads = 256 page-table rows per
// sequence) driving a worker that does no math. Prints, per (batch, context, policy), the
// engine's time per decode step outside the worker (what a GPU step must add to its own time),
// and the CUDA worker's host work on the same steps, which is host code run here on the real
// batches: BuildHostStep (workers/cuda/step_layout.h), the per-layer decode plans (CUDA builds
// only: the planner lives in kernels/decode_attention.cu) and the copy of the step's arrays
// into the staging buffer (what StepInputs::Put does before the one upload). `export` is
// KvCacheManager::ExportCsr of the same rows on its own, a part of the engine's time.
//
//   engine_host_bench [--config DIR] [--scores FILE] [--batch N]
// Single-threaded engine as in `hkv serve`; numbers are the median over the steady decode.
//
//   engine_host_bench --serve-mix [--requests N]
// The short-context serving mix of the GPU's c256 runs instead (256 clients in a closed loop,
// prompts and outputs of 128-384 tokens, full KV then HeadKV B=128): the engine's own time per
// step (schedule: building the step; update: applying its results), from its metrics.

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "block_manager/kv_cache_manager.h"
#include "common/malloc_tuning.h"
#include "common/page_table_mirror.h"
#include "headkv/head_scores.h"
#include "model/hf_config.h"
#include "server/engine.h"
#include "workers/cuda/device_page_table.h"
#include "workers/cuda/step_layout.h"
#include "workers/worker.h"
#ifdef HKV_WITH_CUDA
#include "kernels/decode_attention.h"
#endif

namespace hkv {
namespace {

using Clock = std::chrono::steady_clock;

double Us(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double, std::micro>(b - a).count();
}

double Median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// The H200's SM count: the decode plans are sized for it (the planner never asks the device).
constexpr int32_t kPlanSms = 132;
#ifdef HKV_WITH_CUDA
constexpr bool kPlanned = true;
#else
constexpr bool kPlanned = false;  // the planner is CUDA code: its column reads n/a
#endif

// The CUDA worker's host work on one step, as CudaWorker::State::LayOut and Stage do it:
// the layout, the per-layer decode plans and the copy of every array into one staging buffer.
struct WorkerHostTimes {
  double layout_us = 0, plan_us = 0, staging_us = 0;
  int64_t indices = 0;   // entries of the step's page table
  int64_t uploaded = 0;  // of which a delta step sends (the rest the device copies)
};

template <typename T>
void Stage(const std::vector<T>& v, std::vector<char>& buf, size_t& used) {
  if (v.empty()) return;
  std::memcpy(buf.data() + used, v.data(), v.size() * sizeof(T));
  used += (v.size() * sizeof(T) + 255) / 256 * 256;
}

template <typename T>
size_t Bytes(const std::vector<T>& v) {
  return (v.size() * sizeof(T) + 255) / 256 * 256;
}

// The CUDA worker's page tables of a delta step: the host's rows and the device's last table
// (CudaWorker::State::ApplyDelta, device_page_table.h).
struct WorkerTables {
  PageTableMirror mirror;
  std::vector<const std::vector<BlockTable>*> rows;
  DeviceTableState device;
};

// With `tables`, a delta step as the CUDA worker runs it: the delta applied to the host's
// rows, the layout from them and the gather plan, counted in the layout's time.
absl::StatusOr<WorkerHostTimes> TimeWorkerHost(const Batch& b, const ModelConfig& config,
                                               std::vector<char>& staging, WorkerTables* tables) {
  WorkerHostTimes t;
  StepLayoutShape shape;
  shape.num_layers = config.num_layers;
  shape.num_kv_heads = config.num_kv_heads;
  shape.vocab_size = config.vocab_size;
  shape.block_size = b.block_size;
  const auto t0 = Clock::now();
  StepRows step_rows;
  if (tables != nullptr) {
    if (b.kv_delta->reset) tables->device.valid = false;
    if (absl::Status s = tables->mirror.Apply(*b.kv_delta); !s.ok()) return s;
    if (absl::Status s = tables->mirror.RowsOf(b, &tables->rows); !s.ok()) return s;
    step_rows = StepRows{&tables->rows, true};
  }
  bool decode_only = true;  // only decode-only steps run as graphs (CudaWorker::State::LayOut)
  for (const SequenceStep& st : b.seqs) decode_only = decode_only && st.tokens.size() == 1;
  const int32_t graph = decode_only ? GraphBatchFor(static_cast<int32_t>(b.seqs.size()), 256) : 0;
  auto h = BuildHostStep(b, shape, graph, step_rows);
  if (!h.ok()) return h.status();
  if (tables != nullptr) {
    PlanTableGather(b, tables->rows, tables->device, &*h);
    RecordDeviceTable(b, *h, &tables->device);
  }
  t.indices = h->indptr_a.back();
  t.uploaded = static_cast<int64_t>(h->gather_upload.size());
  const auto t1 = Clock::now();
  t.layout_us = Us(t0, t1);
#ifdef HKV_WITH_CUDA
  // CudaWorker::State::Stage's planning loop: a plan per layer, rebased when the lengths equal
  // the last planned layer's.
  namespace k = ::hkv::kernels;
  const int32_t L = config.num_layers, H = config.num_kv_heads;
  k::DecodePlanOptions o;
  o.max_rows = std::max(1, h->num_decode * H);
  o.max_work_items = o.max_rows + (h->graph ? std::min(1024, 4 * kPlanSms) : 1024);
  o.group_size = config.num_heads / H;
  o.head_dim = config.head_dim;
  o.num_sms = kPlanSms;
  o.fixed_grid = h->graph;
  std::vector<int32_t> meta(k::DecodeMetaInts(o) * L);
  std::vector<k::DecodePlan> plans(L);
  std::vector<int32_t> row_ids(static_cast<size_t>(h->real_decode) * H);
  int32_t base = -1;
  for (int32_t l = 0; l < L; ++l) {
    for (int32_t s = 0; s < h->real_decode; ++s) {
      for (int32_t hh = 0; hh < H; ++hh) row_ids[s * H + hh] = s * L * H + l * H + hh;
    }
    int32_t* m = meta.data() + k::DecodeMetaInts(o) * l;
    if (base >= 0 && k::RebaseDecodePlan(plans[base], meta.data() + k::DecodeMetaInts(o) * base,
                                         h->indptr_a.data(), h->last_a.data(), b.block_size,
                                         row_ids.data(), m)) {
      continue;
    }
    if (k::BuildDecodePlan(o, h->indptr_a.data(), h->last_a.data(), h->real_decode * H,
                           b.block_size, row_ids.data(), m, &plans[l]) != cudaSuccess) {
      return absl::InternalError("decode plan failed");
    }
    base = l;
  }
#endif
  const auto t2 = Clock::now();
  t.plan_us = Us(t1, t2);
  // A delta step's indices_a is built on the device: nothing of it is staged.
  const std::vector<BlockId> none;
  const std::vector<BlockId>& indices_a = h->device_indices   ? none
                                          : h->shared_indices ? *h->batch_indices
                                                              : h->indices_a;
  const size_t bytes = Bytes(h->ids) + Bytes(h->pos) + Bytes(h->sample_rows) +
                       Bytes(h->sample_token) + Bytes(h->slots) + Bytes(h->last_a) +
                       Bytes(h->indptr_a) + Bytes(h->last_b) + Bytes(h->indptr_b) +
                       Bytes(h->cu_prefill) + Bytes(h->cu_select) + Bytes(h->caps) +
                       Bytes(h->indices_b) + Bytes(indices_a) + Bytes(h->ada_blocks) +
                       Bytes(h->gather_segments) + Bytes(h->gather_upload);
  if (staging.size() < bytes) staging.resize(bytes);
  size_t used = 0;
  Stage(h->ids, staging, used);
  Stage(h->pos, staging, used);
  Stage(h->sample_rows, staging, used);
  Stage(h->sample_token, staging, used);
  Stage(h->slots, staging, used);
  Stage(h->last_a, staging, used);
  Stage(h->indptr_a, staging, used);
  Stage(h->last_b, staging, used);
  Stage(h->indptr_b, staging, used);
  Stage(h->cu_prefill, staging, used);
  Stage(h->cu_select, staging, used);
  Stage(h->caps, staging, used);
  Stage(h->indices_b, staging, used);
  Stage(indices_a, staging, used);
  Stage(h->ada_blocks, staging, used);
  Stage(h->gather_segments, staging, used);
  Stage(h->gather_upload, staging, used);
  t.staging_us = Us(t2, Clock::now());
  return t;
}

// Returns token 7 for every sampled sequence and the plan's counts for compressions; records
// the time between the end of one Execute and the start of the next (the engine's host time),
// and the CUDA worker's host work on the steady steps (not counted in that gap).
class NullWorker : public Worker {
 public:
  NullWorker(ModelConfig config, int32_t batch, bool deltas)
      : config_(std::move(config)), batch_(batch), deltas_(deltas) {}
  const ModelConfig& config() const override { return config_; }
  std::string name() const override { return "null"; }
  bool AcceptsPageTableDeltas() const override { return deltas_; }
  absl::StatusOr<BatchResult> Execute(const Batch& b) override {
    const auto now = Clock::now();
    bool decode_only = true;
    for (const SequenceStep& s : b.seqs) decode_only = decode_only && s.tokens.size() == 1;
    // Steady state only: every sequence of the batch decoding. A delta step's tables follow
    // every step.
    const bool steady =
        decode_only && last_end_.has_value() && static_cast<int32_t>(b.seqs.size()) == batch_;
    if (steady) gaps_us_.push_back(Us(*last_end_, now));
    if (steady || (b.kv_delta.has_value() && batch_ > 0)) {
      auto t = TimeWorkerHost(b, config_, staging_, b.kv_delta.has_value() ? &tables_ : nullptr);
      if (!t.ok()) {
        std::fprintf(stderr, "worker host work: %s\n", std::string(t.status().message()).c_str());
        return t.status();
      }
      if (steady) {
        rows_ = b.num_rows();
        indices_ = t->indices;
        uploaded_.push_back(static_cast<double>(t->uploaded));
        layout_us_.push_back(t->layout_us);
        plan_us_.push_back(t->plan_us);
        staging_us_.push_back(t->staging_us);
      }
    }
    BatchResult r;
    r.seqs.resize(b.seqs.size());
    for (size_t i = 0; i < b.seqs.size(); ++i) {
      const SequenceStep& s = b.seqs[i];
      r.seqs[i].id = s.id;
      if (s.sample) r.seqs[i].token = 7;
      if (s.select) {
        // The prompt's length: a chunked compressed prefill's last chunk selects over all of it.
        const int32_t n = s.start_pos + static_cast<int32_t>(s.tokens.size());
        for (int32_t cap : s.selection.capacity) {
          r.seqs[i].kept_per_head.push_back(std::min(cap, n - s.selection.window) +
                                            s.selection.window);
        }
      }
    }
    last_end_ = Clock::now();
    return r;
  }
  int64_t rows_ = 0, indices_ = 0;
  std::vector<double> gaps_us_, layout_us_, plan_us_, staging_us_, uploaded_;

 private:
  ModelConfig config_;
  int32_t batch_;
  bool deltas_;
  WorkerTables tables_;
  std::optional<Clock::time_point> last_end_;
  std::vector<char> staging_;
};

// The page-table export of one decode step on its own, both ways: KvCacheManager::ExportCsr
// of `batch` sequences holding `tokens` in every row, and ExportDelta + PageTableMirror::Apply
// over 64 decode steps (each row takes a new block every block_size steps), per step.
struct ExportTimes {
  double csr_us = -1, delta_us = -1, delta_mean_us = -1, changed_rows = 0, tail_blocks = 0;
};

ExportTimes TimeExport(const ModelConfig& config, int32_t batch, int32_t tokens) {
  ExportTimes out;
  KvCacheConfig c;
  c.num_blocks = 8 << 20;
  c.block_size = 16;
  c.num_layers = config.num_layers;
  c.num_kv_heads = config.num_kv_heads;
  KvCacheManager kv(c);
  std::vector<RequestId> ids;
  for (int32_t i = 0; i < batch; ++i) {
    ids.push_back(i + 1);
    if (!kv.AppendUniform(i + 1, tokens)) return out;
  }
  std::vector<double> us;
  for (int rep = 0; rep < 15; ++rep) {
    const auto t0 = Clock::now();
    KvCsr csr = kv.ExportCsr(ids);
    us.push_back(Us(t0, Clock::now()));
    if (csr.indptr.size() != ids.size() * kv.num_rows_per_seq() + 1) return out;
  }
  out.csr_us = Median(us);
  PageTableMirror mirror;
  if (!mirror.Apply(kv.ExportDelta(ids)).ok()) return out;
  constexpr int kSteps = 64;
  std::vector<double> delta_us;
  for (int step = 0; step < kSteps; ++step) {
    for (RequestId id : ids) {
      if (!kv.AppendUniform(id, 1)) return out;
    }
    const auto t0 = Clock::now();
    const PageTableDelta d = kv.ExportDelta(ids);
    if (!mirror.Apply(d).ok()) return out;
    delta_us.push_back(Us(t0, Clock::now()));
    out.changed_rows += static_cast<double>(d.num_changed_rows()) / kSteps;
    out.tail_blocks += static_cast<double>(d.num_tail_blocks()) / kSteps;
  }
  // The sequences' lengths are aligned: every 16th step adds a block to every row, the others
  // none. The median is a step without new blocks; the mean spreads the block steps.
  out.delta_us = Median(delta_us);
  double sum = 0;
  for (double v : delta_us) sum += v;
  out.delta_mean_us = sum / kSteps;
  return out;
}

struct ExportRow {
  int32_t batch, context;
  ExportTimes times;
};

// The engine both modes drive: Llama-3-8B's rows in a pool of 8M head-blocks of 16 tokens,
// 8,192-token steps, at most `max_seqs` sequences.
EngineOptions BenchEngineOptions(const ModelConfig& config, int32_t max_seqs,
                                 std::shared_ptr<const HeadScores> scores) {
  EngineOptions o;
  o.scheduler.max_batch_tokens = 8192;
  o.scheduler.max_seqs = max_seqs;
  o.kv.num_blocks = 8 << 20;
  o.kv.block_size = 16;
  o.kv_bytes_per_token_row = 2 * config.head_dim * 2;
  o.head_scores = std::move(scores);
  return o;
}

void Run(const ModelConfig& config, std::shared_ptr<const HeadScores> scores, int32_t batch,
         int32_t context, const std::string& policy, int32_t budget, bool deltas,
         std::vector<ExportRow>* exports) {
  auto worker = std::make_unique<NullWorker>(config, batch, deltas);
  NullWorker* w = worker.get();
  Engine engine(BenchEngineOptions(config, batch, std::move(scores)), std::move(worker), nullptr);
  engine.Start();
  std::vector<std::shared_ptr<RequestStream>> streams;
  for (int32_t i = 0; i < batch; ++i) {
    EngineRequest r;
    r.prompt.assign(context, 11);
    r.sampling.max_tokens = 64;
    r.sampling.ignore_eos = true;
    r.kv_policy = policy;
    r.kv_budget = budget;
    auto s = engine.Submit(std::move(r));
    if (!s.ok()) {
      std::fprintf(stderr, "submit: %s\n", std::string(s.status().message()).c_str());
      return;
    }
    streams.push_back(*s);
  }
  for (auto& s : streams) {
    while (true) {
      auto c = s->Next(absl::Seconds(600));
      if (!c.has_value() || c->finished) break;
    }
  }
  engine.Stop();
  const double engine_us = Median(w->gaps_us_), layout = Median(w->layout_us_),
               plan = Median(w->plan_us_), staging = Median(w->staging_us_);
  std::printf("| %d | %d | %s | %s | %lld | %lld | %.0f | %.0f | %.0f | %s | %.0f | %.0f |\n",
              batch, context,
              policy == "full" ? "full" : (policy + " B=" + std::to_string(budget)).c_str(),
              deltas ? "deltas" : "full CSR", static_cast<long long>(w->rows_),
              static_cast<long long>(w->indices_), deltas ? Median(w->uploaded_) : w->indices_,
              engine_us, layout, kPlanned ? std::to_string(static_cast<int>(plan)).c_str() : "n/a",
              staging, engine_us + layout + plan + staging);
  if (policy == "full" && deltas) {
    const ExportTimes e = TimeExport(config, batch, context + 32);
    exports->push_back({batch, context, e});
  }
}

// The serving mix: `clients` threads each send requests one after another (closed loop) until
// `requests` were sent, prompt and output lengths uniform in [128, 384] (seeded), to an engine
// whose worker does no math. Prints the engine's time per step from its metrics.
void RunServeMix(const ModelConfig& config, std::shared_ptr<const HeadScores> scores,
                 const std::string& policy, int32_t budget, int32_t clients, int32_t requests) {
  auto worker = std::make_unique<NullWorker>(config, -1, true);
  Engine engine(BenchEngineOptions(config, clients, std::move(scores)), std::move(worker), nullptr);
  engine.Start();
  std::atomic<int32_t> next{0}, failed{0};
  const auto t0 = Clock::now();
  std::vector<std::thread> threads;
  for (int32_t c = 0; c < clients; ++c) {
    threads.emplace_back([&] {
      for (int32_t i = next++; i < requests; i = next++) {
        std::mt19937 rng(static_cast<uint32_t>(i));
        std::uniform_int_distribution<int32_t> len(128, 384);
        EngineRequest r;
        r.prompt.resize(len(rng));
        for (TokenId& t : r.prompt) t = 1000 + static_cast<TokenId>(rng() % 100000);
        r.sampling.max_tokens = len(rng);
        r.sampling.ignore_eos = true;
        r.kv_policy = policy;
        r.kv_budget = budget;
        auto s = engine.Submit(std::move(r));
        if (!s.ok()) {
          failed++;
          continue;
        }
        while (true) {
          auto chunk = (*s)->Next(absl::Seconds(600));
          if (!chunk.has_value() || chunk->finished) break;
        }
      }
    });
  }
  for (std::thread& t : threads) t.join();
  const double wall_s = std::chrono::duration<double>(Clock::now() - t0).count();
  const EngineMetrics& m = engine.metrics();
  const double steps = std::max<int64_t>(m.engine_steps_total.load(), 1);
  std::printf(
      "| %s | %d | %d | %.0f | %lld | %.1f | %.3f | %.3f | %.3f | %.3f | %.1f |\n",
      policy == "full" ? "full" : (policy + " B=" + std::to_string(budget)).c_str(), requests,
      failed.load(), steps, static_cast<long long>(m.engine_prefill_steps_total.load()),
      m.engine_step_tokens_total.load() / steps, m.engine_schedule_ns_total.load() / steps * 1e-6,
      m.engine_update_ns_total.load() / steps * 1e-6,
      m.engine_deliver_ns_total.load() / steps * 1e-6,
      m.engine_execute_ns_total.load() / steps * 1e-6, wall_s);
  engine.Stop();
}

}  // namespace
}  // namespace hkv

int main(int argc, char** argv) {
  if (std::getenv("HKV_DEFAULT_MALLOC") == nullptr) hkv::TuneMallocForLargeStepBuffers();
  std::string config_dir = "bench/configs/Meta-Llama-3-8B-Instruct";
  int only_batch = 0;
  bool serve_mix = false;
  int32_t mix_requests = 1024;
  std::string scores_path =
      "../shared/headkv_scores/Meta-Llama-3-8B-Instruct_retrieval_reasoning_heads.json";
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--serve-mix") == 0) serve_mix = true;
  }
  for (int i = 1; i + 1 < argc; i += 2) {
    if (std::strcmp(argv[i], "--serve-mix") == 0) {
      i -= 1;  // a flag without a value
      continue;
    }
    if (std::strcmp(argv[i], "--requests") == 0) mix_requests = std::atoi(argv[i + 1]);
    if (std::strcmp(argv[i], "--config") == 0) config_dir = argv[i + 1];
    if (std::strcmp(argv[i], "--scores") == 0) scores_path = argv[i + 1];
    if (std::strcmp(argv[i], "--batch") == 0) only_batch = std::atoi(argv[i + 1]);
  }
  auto config = hkv::LoadHfConfig(config_dir);
  if (!config.ok()) {
    std::fprintf(stderr, "%s\n", std::string(config.status().message()).c_str());
    return 1;
  }
  std::shared_ptr<const hkv::HeadScores> scores;
  if (auto s = hkv::LoadHeadScores(scores_path); s.ok()) {
    scores = std::make_shared<const hkv::HeadScores>(std::move(*s));
  }
  if (serve_mix) {
    std::printf(
        "| policy | requests | failed | steps | prefill steps | tokens/step | schedule ms/step | "
        "update ms/step | deliver ms/step | worker ms/step | wall s |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|\n");
    hkv::RunServeMix(*config, nullptr, "full", 0, 256, mix_requests);
    if (scores != nullptr) hkv::RunServeMix(*config, scores, "headkv", 128, 256, mix_requests);
    return 0;
  }
  std::printf(
      "| batch | context | policy | page tables | page rows | page indices | indices sent | "
      "engine us/step | worker layout us | worker plan us | worker staging us | host total us "
      "|\n");
  std::printf("|---|---|---|---|---|---|---|---|---|---|---|---|\n");
  std::vector<hkv::ExportRow> exports;  // printed after the main table
  for (int32_t batch : {1, 64, 256}) {
    for (int32_t context : {512, 4096}) {
      if (batch * context > 256 * 4096 || (only_batch > 0 && batch != only_batch)) continue;
      for (bool deltas : {false, true}) {
        hkv::Run(*config, scores, batch, context, "full", 0, deltas, &exports);
        if (scores != nullptr) {
          hkv::Run(*config, scores, batch, context, "headkv", 128, deltas, &exports);
        }
      }
    }
  }
  std::printf(
      "\n| batch | context | full CSR export us | delta export + mirror us, median / mean "
      "| changed rows/step | new blocks/step |\n|---|---|---|---|---|---|\n");
  for (const auto& r : exports) {
    std::printf("| %d | %d | %.0f | %.1f / %.1f | %.0f | %.0f |\n", r.batch, r.context,
                r.times.csr_us, r.times.delta_us, r.times.delta_mean_us, r.times.changed_rows,
                r.times.tail_blocks);
  }
  return 0;
}
