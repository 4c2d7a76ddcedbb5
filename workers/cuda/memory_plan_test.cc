#include "workers/cuda/memory_plan.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace hkv {
namespace {

using ::testing::HasSubstr;

ModelConfig SmallConfig() {
  ModelConfig c;
  c.dim = 64;
  c.hidden_dim = 128;
  c.num_layers = 2;
  c.num_heads = 4;
  c.num_kv_heads = 2;
  c.head_dim = 16;
  c.vocab_size = 100;
  return c;
}

TEST(MemoryPlanTest, WeightBytesCountsEveryBf16Tensor) {
  ModelConfig c = SmallConfig();
  // Embedding and LM head 100 x 64 each, final norm 64; per layer: two norms 2 x 64, q/k/v
  // (64 + 2 x 32) x 64, o 64 x 64, gate/up/down 3 x 128 x 64. Two bytes each.
  const int64_t per_layer = 2 * 64 + 128 * 64 + 64 * 64 + 3 * 128 * 64;
  EXPECT_EQ(WeightBytes(c), 2 * (2 * 100 * 64 + 64 + 2 * per_layer));
  c.tie_embeddings = true;  // no separate LM head
  EXPECT_EQ(WeightBytes(c), 2 * (100 * 64 + 64 + 2 * per_layer));
}

TEST(MemoryPlanTest, StepBuffersScaleWithPlannedTokensAndSequences) {
  const ModelConfig c = SmallConfig();
  // res, xb, tmp (3 x 64), qkv 128, attn 64, gate_up 256 and hidden 128, bf16.
  EXPECT_EQ(ActivationBytesPerToken(c), 2 * (3 * 64 + 128 + 64 + 3 * 128));
  CudaWorkerOptions o;
  o.max_step_tokens = 10;
  o.max_seqs = 3;
  EXPECT_EQ(StepBufferBytes(c, o), 10 * ActivationBytesPerToken(c) + 3 * (100 * 4 + 64 * 2 + 4));
}

TEST(MemoryPlanTest, PoolTakesWhatTheUtilizationTargetLeaves) {
  ModelConfig c = SmallConfig();
  c.head_dim = 128;
  CudaWorkerOptions o;
  o.block_size = 16;
  o.gpu_memory_utilization = 0.5;
  o.activation_reserve_bytes = 512LL << 20;
  EXPECT_EQ(KvBlockBytes(16, 128), 2 * 16 * 128 * 2);
  // 10 GiB x 0.5 - 1 GiB in use - 0.5 GiB headroom = 3.5 GiB of 8 KiB blocks.
  const auto blocks = KvPoolBlocks(c, o, 10LL << 30, 1LL << 30);
  ASSERT_TRUE(blocks.ok()) << blocks.status();
  EXPECT_EQ(*blocks, (7LL << 29) / 8192);
  o.num_blocks = 77;  // An explicit size wins over the budget.
  EXPECT_EQ(KvPoolBlocks(c, o, 10LL << 30, 1LL << 30).value(), 77);
}

TEST(MemoryPlanTest, NoRoomForAPoolIsResourceExhausted) {
  const ModelConfig c = SmallConfig();
  CudaWorkerOptions o;
  o.gpu_memory_utilization = 0.1;
  const auto blocks = KvPoolBlocks(c, o, 1LL << 30, 1LL << 30);
  EXPECT_EQ(blocks.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(blocks.status().message(), HasSubstr("no room for a KV pool"));
  o.num_blocks = int64_t{INT32_MAX} + 1;  // Block ids are 32-bit.
  EXPECT_EQ(KvPoolBlocks(c, o, 1LL << 40, 0).status().code(), absl::StatusCode::kResourceExhausted);
}

TEST(MemoryPlanTest, ModelFitsOnlyWithItsBuffersAndHeadroom) {
  const ModelConfig c = SmallConfig();
  CudaWorkerOptions o;
  o.max_step_tokens = 8;
  o.max_seqs = 2;
  o.activation_reserve_bytes = 1000;
  const int64_t need = WeightBytes(c) + StepBufferBytes(c, o) + 1000;
  EXPECT_TRUE(CheckModelFits(c, o, need).ok());
  const absl::Status short_one = CheckModelFits(c, o, need - 1);
  EXPECT_EQ(short_one.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(short_one.message(), HasSubstr("short"));
}

}  // namespace
}  // namespace hkv
