// Page-table deltas on the GPU (label gpu; skips without one): the same requests, submitted
// before the engine starts (so both runs schedule the same steps), served by the CUDA worker
// with the page tables kept on the device (deltas) and with the full CSR every step. Every
// token must be equal: mixed KV policies, prompts of many lengths, sampled n > 1 requests that
// share their prompt's blocks (copy-on-write), and a pool small enough to preempt, with decode
// steps run as CUDA graphs and eagerly.

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
  int64_t preemptions = 0;
  bool ok = true;
};

Served Serve(const std::string& model_dir, bool deltas, int32_t graph_max_batch) {
  ServerConfig config = TestServerConfig();
  config.model = model_dir;
  config.tokenizer.clear();
  config.head_scores.clear();
  config.dummy_weights = true;
  config.device = "cuda";
  config.kv_pool_blocks = 1200;  // small enough that decode growth preempts (checked below)
  config.max_seqs = 24;
  config.max_batch_tokens = 512;
  config.cuda_graph_max_batch = graph_max_batch;
  config.page_table_deltas = deltas;
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
    r.sampling.temperature = i % 5 == 0 ? 0.8f : 0.0f;
    r.sampling.n = i % 5 == 0 ? 3 : 1;
    r.seed = 100 + i;
    r.kv_policy = policies[i % 4];
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
    const int samples = i % 5 == 0 ? 3 : 1;
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
  engine.Stop();
  return out;
}

TEST(GpuDeltaStepsTest, DeviceKeptPageTablesGiveTheFullCsrTokens) {
  if (!HaveGpu()) GTEST_SKIP() << "no CUDA device";
  const std::string dir = ::testing::TempDir() + "/hkv_gpu_delta_model";
  std::system(("mkdir -p " + dir).c_str());
  std::ofstream(dir + "/config.json") << R"({"architectures": ["LlamaForCausalLM"],
      "hidden_size": 512, "intermediate_size": 1024, "num_hidden_layers": 4,
      "num_attention_heads": 8, "num_key_value_heads": 4, "vocab_size": 1024,
      "max_position_embeddings": 4096, "rope_theta": 500000.0})";
  for (int32_t graphs : {256, 0}) {
    SCOPED_TRACE(graphs > 0 ? "graphs" : "eager");
    const Served full = Serve(dir, false, graphs);
    const Served delta = Serve(dir, true, graphs);
    ASSERT_TRUE(full.ok && delta.ok);
    EXPECT_GT(full.preemptions, 0) << "the pool should be small enough to preempt";
    EXPECT_EQ(delta.preemptions, full.preemptions);
    ASSERT_EQ(delta.tokens.size(), full.tokens.size());
    for (const auto& [key, tokens] : full.tokens) {
      EXPECT_EQ(delta.tokens.at(key), tokens)
          << "request " << key.first << " sample " << key.second;
    }
  }
}

}  // namespace
}  // namespace hkv::testing
