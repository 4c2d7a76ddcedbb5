// Choosing and building one device's worker, and sizing its KV pool (declared in
// model_setup.h).
#include <algorithm>
#include <iostream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/status_macros.h"
#include "server/model_setup.h"
#include "workers/cpu/cpu_worker.h"
#ifdef HKV_WITH_CUDA
#include "workers/cuda/cuda_worker.h"
#endif

namespace hkv {

CudaWorkerOptions CudaWorkerOptionsFor(const ServerConfig& config, const ModelConfig& model) {
  CudaWorkerOptions o;
  o.block_size = config.block_size;
  o.num_blocks = config.kv_pool_blocks;
  o.gpu_memory_utilization = config.gpu_memory_utilization;
  // A compressed prefill may run the whole prompt in one step: plan activations for the longest.
  o.max_step_tokens = std::max(config.max_batch_tokens, model.max_seq_len);
  o.max_seqs = config.max_seqs;
  o.cuda_graph_max_batch = std::min(config.cuda_graph_max_batch, config.max_seqs);
  // ValidateServerConfig has checked the name.
  o.prefill_kernel = config.cuda_prefill_kernel == "mma"     ? CudaPrefillKernel::kMmaSync
                     : config.cuda_prefill_kernel == "wgmma" ? CudaPrefillKernel::kWgmma
                                                             : CudaPrefillKernel::kAuto;
  o.fused_decode = config.cuda_fused_decode;
  return o;
}

std::string ResolveDevice(const std::string& device, const ModelConfig& model) {
  if (device != "auto") return device;
#ifdef HKV_WITH_CUDA
  if (CudaDeviceAvailable() && CudaWorker::Supports(model).ok()) return "cuda";
#endif
  return "cpu";
}

absl::StatusOr<KvPoolSizing> SizeKvPool(const ServerConfig& config, const ModelConfig& m,
                                        int32_t kv_dtype_bytes) {
  KvPoolSizing s;
  s.bytes_per_token_row = 2LL * m.head_dim * kv_dtype_bytes;
  s.bytes_per_block = s.bytes_per_token_row * config.block_size;
  if (config.kv_pool_blocks > 0) {
    s.num_blocks = config.kv_pool_blocks;
  } else {
    s.num_blocks = static_cast<int64_t>(config.kv_pool_gb * (1LL << 30)) / s.bytes_per_block;
  }
  if (s.num_blocks < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("the KV pool holds no block (", s.bytes_per_block,
                     " bytes each): raise --kv-pool-gb or --kv-pool-blocks"));
  }
  if (s.num_blocks > INT32_MAX) {
    return absl::InvalidArgumentError("the KV pool is larger than 2^31 blocks: lower it");
  }
  const int64_t rows = static_cast<int64_t>(m.num_layers) * m.num_kv_heads;
  const int64_t blocks_per_row_full = (m.max_seq_len + config.block_size - 1) / config.block_size;
  const int64_t blocks_per_row_budget =
      (config.default_kv_budget + config.block_size - 1) / config.block_size;
  s.summary = absl::StrFormat(
      "KV pool: %d head-blocks x %d B (block_size %d, head_dim %d, %d B/elem, K+V) = %.3f GiB\n"
      "  rows per sequence: %d layers x %d KV heads = %d\n"
      "  max sequences at full context (%d tokens): %d\n"
      "  max sequences at %d tokens per head (policy %s, prompt region): %d",
      s.num_blocks, s.bytes_per_block, config.block_size, m.head_dim, kv_dtype_bytes,
      static_cast<double>(s.num_blocks * s.bytes_per_block) / (1LL << 30), m.num_layers,
      m.num_kv_heads, rows, m.max_seq_len, s.num_blocks / (rows * blocks_per_row_full),
      config.default_kv_budget, config.default_kv_policy,
      s.num_blocks / (rows * blocks_per_row_budget));
  return s;
}

absl::StatusOr<std::unique_ptr<Worker>> MakeWorker(const ServerConfig& config,
                                                   std::shared_ptr<const Model> model) {
  if (config.device == "cpu") {
    if (model->device_dummy_seed.has_value()) {
      return absl::InvalidArgumentError("weights left to the GPU need --device cuda");
    }
    const int threads = config.num_threads > 0
                            ? config.num_threads
                            : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
    return std::unique_ptr<Worker>(std::make_unique<CpuWorker>(std::move(model), /*num_blocks=*/0,
                                                               config.block_size, threads));
  }
#ifdef HKV_WITH_CUDA
  const CudaWorkerOptions options = CudaWorkerOptionsFor(config, model->config);
  HKV_ASSIGN_OR_RETURN(std::unique_ptr<CudaWorker> worker,
                       CudaWorker::Create(std::move(model), options));
  std::cerr << worker->sizing() << "\n";
  return std::unique_ptr<Worker>(std::move(worker));
#else
  return absl::UnavailableError("--device cuda: this hkv was built without CUDA (HKV_CUDA=OFF)");
#endif
}

}  // namespace hkv
