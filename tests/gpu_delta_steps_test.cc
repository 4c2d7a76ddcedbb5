// Page-table deltas on the GPU (label gpu; skips without one): the same requests, submitted
// before the engine starts (so both runs schedule the same steps), served by the CUDA worker
// with the page tables kept on the device (deltas) and with the full CSR every step. Every
// token must be equal: mixed KV policies, prompts of many lengths, sampled n > 1 requests that
// share their prompt's blocks (copy-on-write), and a pool small enough to preempt, with decode
// steps run as CUDA graphs and eagerly.
//
// Async scheduling on the GPU (step N+1 launched before step N's results, its decodes' input
// tokens gathered on the device): with greedy full-KV requests that all fit (no preemption, no
// seat waits), the async engine runs exactly the sync engine's steps, so every token must be
// equal; with the mixed requests above (forks and selects sit out a step, ahead steps never
// preempt: other batches, other bf16 rounding) every request must still end as asked.

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "server/model_setup.h"
#include "tests/server_test_util.h"

#ifdef HKV_WITH_CUDA
#include "workers/cuda/cuda_worker.h"
#endif

namespace hkv::testing {
namespace {

bool HaveGpu() {
#ifdef HKV_WITH_CUDA
  return CudaDeviceAvailable();
#else
  return false;
#endif
}

struct Served {
  std::map<std::pair<int, int>, std::vector<TokenId>> tokens;  // (request, sample) -> tokens
  int64_t preemptions = 0, ahead_steps = 0, steps = 0;
  bool ok = true;
};

struct Setup {
  bool deltas = true;
  bool async = false;
  int32_t graph_max_batch = 256;
  bool mixed = true;  // false: greedy full-KV requests in a pool that never preempts
};

Served Serve(const std::string& model_dir, const Setup& setup) {
  ServerConfig config = TestServerConfig();
  config.model = model_dir;
  config.tokenizer.clear();
  config.head_scores.clear();
  config.dummy_weights = true;
  config.device = "cuda";
  // 1200: small enough that decode growth preempts (checked below).
  config.kv_pool_blocks = setup.mixed ? 1200 : 20000;
  config.max_seqs = setup.mixed ? 24 : 32;
  config.max_batch_tokens = 512;
  config.cuda_graph_max_batch = setup.graph_max_batch;
  config.page_table_deltas = setup.deltas;
  config.async_scheduling = setup.async;
  Served out;
  auto bundle = BuildEngine(config);
  EXPECT_TRUE(bundle.ok()) << bundle.status();
  if (!bundle.ok()) {
    out.ok = false;
    return out;
  }
  Engine& engine = *bundle->engine;
  const char* policies[] = {"full", "snapkv", "pyramidkv", "adakv"};
  std::vector<std::shared_ptr<RequestStream>> streams;
  for (int i = 0; i < 32; ++i) {
    EngineRequest r;
    for (int t = 0; t < 20 + 37 * i % 400; ++t) r.prompt.push_back(3 + (t * 31 + i * 7) % 1000);
    r.sampling.max_tokens = 24 + i % 17;
    r.sampling.ignore_eos = true;
    r.sampling.temperature = setup.mixed && i % 5 == 0 ? 0.8f : 0.0f;
    r.sampling.n = setup.mixed && i % 5 == 0 ? 3 : 1;
    r.seed = 100 + i;
    r.kv_policy = setup.mixed ? policies[i % 4] : "full";
    r.kv_budget = 24 + i % 3 * 8;
    auto s = engine.Submit(std::move(r));
    EXPECT_TRUE(s.ok()) << s.status();
    if (!s.ok()) {
      out.ok = false;
      return out;
    }
    streams.push_back(*s);
  }
  engine.Start();
  for (size_t i = 0; i < streams.size(); ++i) {
    const absl::Time end = absl::Now() + absl::Seconds(120);
    int finished = 0;
    const int samples = setup.mixed && i % 5 == 0 ? 3 : 1;
    while (finished < samples && absl::Now() < end) {
      std::optional<StreamChunk> c = streams[i]->Next(absl::Milliseconds(200));
      if (!c.has_value()) continue;
      auto& t = out.tokens[{static_cast<int>(i), c->index}];
      t.insert(t.end(), c->token_ids.begin(), c->token_ids.end());
      if (c->finished) {
        EXPECT_TRUE(c->status.ok()) << c->status;
        ++finished;
      }
    }
    EXPECT_EQ(finished, samples) << "request " << i;
  }
  out.preemptions = engine.metrics().preemptions_total.load();
  out.ahead_steps = engine.metrics().engine_ahead_steps_total.load();
  out.steps = engine.metrics().engine_steps_total.load();
  engine.Stop();
  return out;
}

std::string ModelDir() {
  const std::string dir = ::testing::TempDir() + "/hkv_gpu_delta_model";
  std::system(("mkdir -p " + dir).c_str());
  std::ofstream(dir + "/config.json") << R"({"architectures": ["LlamaForCausalLM"],
      "hidden_size": 512, "intermediate_size": 1024, "num_hidden_layers": 4,
      "num_attention_heads": 8, "num_key_value_heads": 4, "vocab_size": 1024,
      "max_position_embeddings": 4096, "rope_theta": 500000.0})";
  return dir;
}

// Every sample of `want` has the same tokens in `got`.
void ExpectSameTokens(const Served& want, const Served& got) {
  ASSERT_EQ(got.tokens.size(), want.tokens.size());
  for (const auto& [key, tokens] : want.tokens) {
    EXPECT_EQ(got.tokens.at(key), tokens) << "request " << key.first << " sample " << key.second;
  }
}

TEST(GpuDeltaStepsTest, DeviceKeptPageTablesGiveTheFullCsrTokens) {
  if (!HaveGpu()) GTEST_SKIP() << "no CUDA device";
  const std::string dir = ModelDir();
  for (int32_t graphs : {256, 0}) {
    SCOPED_TRACE(graphs > 0 ? "graphs" : "eager");
    const Served full = Serve(dir, {.deltas = false, .graph_max_batch = graphs});
    const Served delta = Serve(dir, {.deltas = true, .graph_max_batch = graphs});
    ASSERT_TRUE(full.ok && delta.ok);
    EXPECT_GT(full.preemptions, 0) << "the pool should be small enough to preempt";
    EXPECT_EQ(delta.preemptions, full.preemptions);
    ExpectSameTokens(full, delta);
  }
}

TEST(GpuDeltaStepsTest, AsyncStepsGiveTheSyncTokens) {
  if (!HaveGpu()) GTEST_SKIP() << "no CUDA device";
  const std::string dir = ModelDir();
  for (int32_t graphs : {256, 0}) {
    SCOPED_TRACE(graphs > 0 ? "graphs" : "eager");
    const Served sync = Serve(dir, {.graph_max_batch = graphs, .mixed = false});
    const Served async = Serve(dir, {.async = true, .graph_max_batch = graphs, .mixed = false});
    ASSERT_TRUE(sync.ok && async.ok);
    EXPECT_EQ(sync.preemptions, 0);
    EXPECT_EQ(async.steps, sync.steps) << "the same steps, planned ahead";
    EXPECT_GT(async.ahead_steps, async.steps * 3 / 4);
    ExpectSameTokens(sync, async);
  }
  // Mixed policies, forks and preemption: other batches, so only the lengths are compared.
  const Served sync = Serve(dir, {});
  const Served async = Serve(dir, {.async = true});
  ASSERT_TRUE(sync.ok && async.ok);
  EXPECT_GT(async.ahead_steps, 0);
  EXPECT_GT(async.preemptions, 0);
  ASSERT_EQ(async.tokens.size(), sync.tokens.size());
  int equal = 0;
  for (const auto& [key, tokens] : sync.tokens) {
    EXPECT_EQ(async.tokens.at(key).size(), tokens.size()) << "request " << key.first;
    equal += async.tokens.at(key) == tokens ? 1 : 0;
  }
  std::printf("mixed requests: %d of %zu samples' tokens equal sync's (%lld / %lld ahead steps)\n",
              equal, sync.tokens.size(), static_cast<long long>(async.ahead_steps),
              static_cast<long long>(async.steps));
}

}  // namespace
}  // namespace hkv::testing
