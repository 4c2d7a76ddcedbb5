// The gRPC server on the GPU (label gpu; skips without one): a Llama-shaped model with random
// weights (head_dim 64, GQA 2) served by the CUDA worker, concurrent streams with mixed KV
// policies, health, and the pool returning to empty.

#include <cstdio>
#include <fstream>
#include <thread>

#include "gtest/gtest.h"
#include "tests/health_client.h"
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

TEST(GpuServeTest, ConcurrentStreamsOnTheCudaWorker) {
  if (!HaveGpu()) GTEST_SKIP() << "no CUDA device";
  const std::string dir = ::testing::TempDir() + "/hkv_gpu_model";
  std::system(("mkdir -p " + dir).c_str());
  std::ofstream(dir + "/config.json") << R"({"architectures": ["LlamaForCausalLM"],
      "hidden_size": 512, "intermediate_size": 1024, "num_hidden_layers": 4,
      "num_attention_heads": 8, "num_key_value_heads": 4, "vocab_size": 1024,
      "max_position_embeddings": 4096, "rope_theta": 500000.0})";
  ServerConfig config = TestServerConfig();
  config.model = dir;
  config.tokenizer.clear();
  config.head_scores.clear();
  config.dummy_weights = true;
  config.device = "cuda";
  config.kv_pool_blocks = 20000;
  TestServer server(config);
  EXPECT_EQ(CheckHealth(server.channel(), "hkv.v1.Generation"), kServing);
  auto stub = server.NewStub();
  const char* policies[] = {"full", "snapkv", "pyramidkv", "adakv"};
  constexpr int kStreams = 24;
  std::vector<StreamResult> results(kStreams);
  std::vector<std::thread> threads;
  for (int i = 0; i < kStreams; ++i) {
    threads.emplace_back([&, i] {
      std::vector<int32_t> prompt;
      for (int t = 0; t < 40 + 23 * i; ++t) prompt.push_back(3 + (t * 31 + i * 7) % 1000);
      hkv::v1::GenerateRequest r = GreedyIds(prompt, 32);
      r.mutable_sampling()->set_ignore_eos(true);
      r.mutable_kv_policy()->set_name(policies[i % 4]);
      r.mutable_kv_policy()->set_budget(32);
      results[i] = RunStream(stub.get(), r);
    });
  }
  for (auto& t : threads) t.join();
  for (int i = 0; i < kStreams; ++i) {
    ASSERT_TRUE(results[i].status.ok()) << i << ": " << results[i].status.error_message();
    EXPECT_EQ(results[i].ids.size(), 32u);
    EXPECT_EQ(results[i].finish, hkv::v1::FINISH_REASON_LENGTH);
    for (int32_t id : results[i].ids) EXPECT_TRUE(id >= 0 && id < 1024);
    if (i % 4 != 0) {
      EXPECT_LT(results[i].usage.kv_tokens_kept(), results[i].usage.kv_tokens_full()) << i;
    }
  }
  for (int wait = 0; wait < 200 && server.engine().metrics().kv_blocks_used.load() != 0; ++wait) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_EQ(server.engine().metrics().kv_blocks_used.load(), 0);
}

}  // namespace
}  // namespace hkv::testing
