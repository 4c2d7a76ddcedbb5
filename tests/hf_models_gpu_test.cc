// The CUDA worker on a checkpoint saved by transformers (tests/data/hf/llama_hd64: head_dim 64,
// the smallest the kernels serve; bf16 weights). At the prompt, its logits must match
// transformers' recorded fp32 logits within the bf16 tolerance (relative L2 error < 3e-2); then,
// following the CPU reference's greedy path, every step's logits stay within the tolerance and
// the greedy token is the CPU's wherever the CPU's top-2 margin exceeds the bf16 error (ties
// closer than that may break either way). Skips without a GPU.

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <fstream>

#include "common/paths.h"
#include "executor/tensor_parallel_worker.h"
#include "gtest/gtest.h"
#include "model/hf_loader.h"
#include "nlohmann/json.hpp"
#include "workers/cpu/cpu_worker.h"
#include "workers/cuda/cuda_worker.h"
#include "workers/test_batch_builder.h"

namespace hkv {
namespace {

using testing::BatchBuilder;
using testing::ClearGreedyMargin;
using testing::kBlockSize;
using testing::kBlocksPerRow;
using testing::RelativeError;
using testing::TestSeq;

constexpr double kTolerance = 3e-2;

TEST(HfModelsGpuTest, CudaWorkerMatchesTransformersAndTheCpuReference) {
  if (!CudaDeviceAvailable()) GTEST_SKIP() << "no CUDA device";
  const std::string dir = SourceDir() + "/tests/data/hf/llama_hd64";
  auto model = LoadHfModel(dir);
  ASSERT_TRUE(model.ok()) << model.status();
  auto shared = std::make_shared<const Model>(std::move(*model));
  const ModelConfig& c = shared->config;
  const int32_t blocks = 8 * c.num_layers * c.num_kv_heads * kBlocksPerRow;
  CpuWorker cpu(shared, blocks, kBlockSize, 2);
  cpu.set_return_logits(true);
  CudaWorkerOptions o;
  o.block_size = kBlockSize;
  o.num_blocks = blocks;
  o.activation_reserve_bytes = 64 << 20;
  o.max_step_tokens = 512;
  o.max_seqs = 8;
  auto gpu = CudaWorker::Create(shared, o);
  ASSERT_TRUE(gpu.ok()) << gpu.status();
  (*gpu)->set_return_logits(true);
  std::ifstream in(dir + "/expected.json");
  const nlohmann::json expected = nlohmann::json::parse(in);
  int32_t slot = 0, compared = 0;
  for (const auto& cs : expected["cases"]) {
    const std::vector<TokenId> prompt = cs["prompt"].get<std::vector<TokenId>>();
    TestSeq seq{slot++, {}, 0};
    BatchBuilder b(c);
    b.AddPlain(&seq, prompt, true, 0);
    Batch batch = b.Take();
    for (int step = 0; step < 8; ++step) {
      auto rc = cpu.Execute(batch);
      auto rg = (*gpu)->Execute(batch);
      ASSERT_TRUE(rc.ok()) << rc.status();
      ASSERT_TRUE(rg.ok()) << rg.status();
      const std::vector<float>& want = rc->seqs[0].logits;
      const std::vector<float>& got = rg->seqs[0].logits;
      if (step == 0) {
        EXPECT_LT(RelativeError(got, cs["last_logits"].get<std::vector<float>>()), kTolerance);
      }
      const double err = RelativeError(got, want);
      EXPECT_LT(err, kTolerance) << "step " << step;
      if (ClearGreedyMargin(want, kTolerance)) {
        EXPECT_EQ(rg->seqs[0].token, rc->seqs[0].token) << "step " << step;
        ++compared;
      }
      if (step == 0) {
        EXPECT_EQ(rc->seqs[0].token, cs["greedy"][0].get<TokenId>());  // CPU == transformers
      }
      BatchBuilder d(c);
      d.AddPlain(&seq, {rc->seqs[0].token}, true, step + 1);
      batch = d.Take();
    }
  }
  std::printf("greedy tokens compared (clear margin): %d of %d\n", compared, 8 * slot);
  EXPECT_GT(compared, 0);
}

// Tensor parallel on the same checkpoint (2 KV heads: one per rank; needs two GPUs): TP=2
// follows TP=1's greedy path with logits within the bf16 tolerance (the all-reduce sums in bf16),
// and picks the same token wherever TP=1's top-2 margin clears that error.
TEST(HfModelsGpuTest, TwoRanksMatchOneOnTheCheckpoint) {
  int gpus = 0;
  if (cudaGetDeviceCount(&gpus) != cudaSuccess || gpus < 2) {
    GTEST_SKIP() << "needs 2 GPUs, found " << gpus;
  }
  const std::string dir = SourceDir() + "/tests/data/hf/llama_hd64";
  auto model = LoadHfModel(dir);
  ASSERT_TRUE(model.ok()) << model.status();
  auto shared = std::make_shared<const Model>(std::move(*model));
  const ModelConfig& c = shared->config;
  TensorParallelOptions o;
  o.base.block_size = kBlockSize;
  o.base.num_blocks = 8 * c.num_layers * c.num_kv_heads * kBlocksPerRow;
  o.base.activation_reserve_bytes = 64 << 20;
  o.base.max_step_tokens = 512;
  o.base.max_seqs = 8;
  o.shared_block_ids = true;  // the test batches use the same ids for every head
  o.devices = {0};
  auto one = TensorParallelWorker::Create(shared, o);
  ASSERT_TRUE(one.ok()) << one.status();
  o.devices = {0, 1};
  auto two = TensorParallelWorker::Create(shared, o);
  ASSERT_TRUE(two.ok()) << two.status();
  (*one)->set_return_logits(true);
  (*two)->set_return_logits(true);
  std::ifstream in(dir + "/expected.json");
  const nlohmann::json expected = nlohmann::json::parse(in);
  int32_t slot = 0, compared = 0;
  for (const auto& cs : expected["cases"]) {
    TestSeq seq{slot++, {}, 0};
    BatchBuilder b(c);
    b.AddPlain(&seq, cs["prompt"].get<std::vector<TokenId>>(), true, 0);
    Batch batch = b.Take();
    for (int step = 0; step < 8; ++step) {
      auto r1 = (*one)->Execute(batch);
      auto r2 = (*two)->Execute(batch);
      ASSERT_TRUE(r1.ok()) << r1.status();
      ASSERT_TRUE(r2.ok()) << r2.status();
      const std::vector<float>& want = r1->seqs[0].logits;
      EXPECT_LT(RelativeError(r2->seqs[0].logits, want), kTolerance) << "step " << step;
      if (ClearGreedyMargin(want, kTolerance)) {
        EXPECT_EQ(r2->seqs[0].token, r1->seqs[0].token) << "step " << step;
        ++compared;
      }
      BatchBuilder d(c);
      d.AddPlain(&seq, {r1->seqs[0].token}, true, step + 1);
      batch = d.Take();
    }
  }
  std::printf("TP=2 vs TP=1 greedy tokens compared (clear margin): %d of %d\n", compared, 8 * slot);
  EXPECT_GT(compared, 0);
}

}  // namespace
}  // namespace hkv
