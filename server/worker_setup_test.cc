// CudaWorkerOptionsFor: what `hkv serve` flags reach a GPU worker. Host only (the options are
// plain data), so it runs in every build.
#include "gtest/gtest.h"
#include "model/model_config.h"
#include "server/model_setup.h"
#include "server/server_config.h"

namespace hkv {
namespace {

TEST(CudaWorkerOptionsForTest, ServeFlagsReachTheWorker) {
  ServerConfig c;
  c.block_size = 32;
  c.kv_pool_blocks = 1234;
  c.gpu_memory_utilization = 0.5;
  c.max_batch_tokens = 2048;
  c.max_seqs = 64;
  c.cuda_graph_max_batch = 256;
  c.cuda_fused_decode = true;
  ModelConfig m;
  m.max_seq_len = 8192;
  const CudaWorkerOptions o = CudaWorkerOptionsFor(c, m);
  EXPECT_EQ(o.block_size, 32);
  EXPECT_EQ(o.num_blocks, 1234);
  EXPECT_DOUBLE_EQ(o.gpu_memory_utilization, 0.5);
  EXPECT_EQ(o.max_step_tokens, 8192);  // a one-step compressed prefill of the longest prompt
  EXPECT_EQ(o.max_seqs, 64);
  EXPECT_EQ(o.cuda_graph_max_batch, 64);  // no graph larger than a step can be
  EXPECT_TRUE(o.fused_decode);
  EXPECT_EQ(o.prefill_kernel, CudaPrefillKernel::kAuto);
}

TEST(CudaWorkerOptionsForTest, PrefillKernelNames) {
  ServerConfig c;
  const ModelConfig m;
  c.cuda_prefill_kernel = "mma";
  EXPECT_EQ(CudaWorkerOptionsFor(c, m).prefill_kernel, CudaPrefillKernel::kMmaSync);
  c.cuda_prefill_kernel = "wgmma";
  EXPECT_EQ(CudaWorkerOptionsFor(c, m).prefill_kernel, CudaPrefillKernel::kWgmma);
  c.cuda_prefill_kernel = "auto";
  EXPECT_EQ(CudaWorkerOptionsFor(c, m).prefill_kernel, CudaPrefillKernel::kAuto);
  EXPECT_FALSE(CudaWorkerOptionsFor(ServerConfig(), m).fused_decode);  // off by default
}

}  // namespace
}  // namespace hkv
