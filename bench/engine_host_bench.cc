// Host overhead of one engine step, without a GPU: the real Engine, Scheduler and
// KvCacheManager at Llama-3-8B's shape (32 layers x 8 KV heads = 256 page-table rows per
// sequence) driving a worker that does no math. Prints, per (batch, context, policy), the
// engine's time per decode step outside the worker: what a GPU step must add to its own time.
//
//   engine_host_bench [--config DIR] [--scores FILE]
// Single-threaded engine as in `hkv serve`; numbers are the median over the steady decode.

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "common/malloc_tuning.h"
#include "headkv/head_scores.h"
#include "model/hf_config.h"
#include "server/engine.h"
#include "workers/worker.h"

namespace hkv {
namespace {

// Returns token 7 for every sampled sequence and the plan's counts for compressions; records
// the time between the end of one Execute and the start of the next (the engine's host time).
class NullWorker : public Worker {
 public:
  NullWorker(ModelConfig config, int32_t batch) : config_(std::move(config)), batch_(batch) {}
  const ModelConfig& config() const override { return config_; }
  std::string name() const override { return "null"; }
  absl::StatusOr<BatchResult> Execute(const Batch& b) override {
    const auto now = std::chrono::steady_clock::now();
    bool decode_only = true;
    for (const SequenceStep& s : b.seqs) decode_only = decode_only && s.tokens.size() == 1;
    // Steady state only: every sequence of the batch decoding.
    if (decode_only && last_end_.has_value() && static_cast<int32_t>(b.seqs.size()) == batch_) {
      gaps_us_.push_back(std::chrono::duration<double, std::micro>(now - *last_end_).count());
      rows_ = b.num_rows();
      indices_ = static_cast<int64_t>(b.kv_indices.size());
    }
    BatchResult r;
    r.seqs.resize(b.seqs.size());
    for (size_t i = 0; i < b.seqs.size(); ++i) {
      const SequenceStep& s = b.seqs[i];
      r.seqs[i].id = s.id;
      if (s.sample) r.seqs[i].token = 7;
      if (s.select) {
        const int32_t n = static_cast<int32_t>(s.tokens.size());
        for (int32_t cap : s.selection.capacity) {
          r.seqs[i].kept_per_head.push_back(std::min(cap, n - s.selection.window) +
                                            s.selection.window);
        }
      }
    }
    last_end_ = std::chrono::steady_clock::now();
    return r;
  }
  double MedianGapUs() {
    if (gaps_us_.empty()) return 0;
    std::sort(gaps_us_.begin(), gaps_us_.end());
    return gaps_us_[gaps_us_.size() / 2];
  }
  int64_t rows_ = 0, indices_ = 0;

 private:
  ModelConfig config_;
  int32_t batch_;
  std::optional<std::chrono::steady_clock::time_point> last_end_;
  std::vector<double> gaps_us_;
};

void Run(const ModelConfig& config, std::shared_ptr<const HeadScores> scores, int32_t batch,
         int32_t context, const std::string& policy, int32_t budget) {
  auto worker = std::make_unique<NullWorker>(config, batch);
  NullWorker* w = worker.get();
  EngineOptions o;
  o.scheduler.max_batch_tokens = 8192;
  o.scheduler.max_seqs = batch;
  o.kv.num_blocks = 8 << 20;
  o.kv.block_size = 16;
  o.kv_bytes_per_token_row = 2 * config.head_dim * 2;
  o.head_scores = std::move(scores);
  Engine engine(o, std::move(worker), nullptr);
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
  std::printf("| %d | %d | %s | %lld | %lld | %.0f |\n", batch, context,
              policy == "full" ? "full" : (policy + " B=" + std::to_string(budget)).c_str(),
              static_cast<long long>(w->rows_), static_cast<long long>(w->indices_),
              w->MedianGapUs());
}

}  // namespace
}  // namespace hkv

int main(int argc, char** argv) {
  if (std::getenv("HKV_DEFAULT_MALLOC") == nullptr) hkv::TuneMallocForLargeStepBuffers();
  std::string config_dir = "bench/configs/Meta-Llama-3-8B-Instruct";
  int only_batch = 0;
  std::string scores_path =
      "../shared/headkv_scores/Meta-Llama-3-8B-Instruct_retrieval_reasoning_heads.json";
  for (int i = 1; i + 1 < argc; i += 2) {
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
  std::printf("| batch | context | policy | page rows | page indices | host us/step |\n");
  std::printf("|---|---|---|---|---|---|\n");
  for (int32_t batch : {1, 64, 256}) {
    for (int32_t context : {512, 4096}) {
      if (batch * context > 256 * 4096 || (only_batch > 0 && batch != only_batch)) continue;
      hkv::Run(*config, scores, batch, context, "full", 0);
      if (scores != nullptr) hkv::Run(*config, scores, batch, context, "headkv", 128);
    }
  }
  return 0;
}
