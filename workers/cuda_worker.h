#pragma once
// CudaWorker: runs a Llama-family model on one GPU with the kernels of kernels/, over a per-head
// paged KV pool in device memory. bf16 weights, activations and K/V; fp32 accumulation and
// logits. Same step contract as the CpuWorker (common/batch.h), so the engine can use either.
//
//   K/V pools: [num_blocks, block_size, head_dim] bf16 each; a block holds block_size tokens of
//   one KV head of one layer, listed by the Batch's CSR row (seq, layer, kv_head).
//
// A step orders its sequences as decodes (one token, paged decode attention), then plain
// prefill chunks (tensor-core prefill attention over the chunk plus the row's earlier tokens),
// then compressed prefills (dense prefill attention, then the fused selection kernel scatters
// each head's kept tokens into its blocks).
//
// Thread-compatible: one Execute at a time, on the thread that created the worker (its CUDA
// device and stream). Adaptive (adakv) selection is not supported here yet.

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/batch.h"
#include "workers/model_config.h"
#include "workers/worker.h"

namespace hkv {

struct CudaWorkerOptions {
  int32_t device = 0;
  int32_t block_size = 16;
  int64_t num_blocks = 0;                // 0: size the pool from free memory.
  double gpu_memory_utilization = 0.9;   // Share of total device memory hkv may use.
  int64_t activation_reserve_bytes = 2LL << 30;  // Kept free for step activations.
};

class CudaWorker : public Worker {
 public:
  // Uploads the weights, then allocates the KV pool. RESOURCE_EXHAUSTED (saying by how much)
  // when the model or the pool does not fit; UNAVAILABLE without a usable GPU.
  static absl::StatusOr<std::unique_ptr<CudaWorker>> Create(std::shared_ptr<const Model> model,
                                                            const CudaWorkerOptions& options);
  ~CudaWorker() override;

  const ModelConfig& config() const override;
  absl::StatusOr<BatchResult> Execute(const Batch& batch) override;
  std::string name() const override;

  int64_t num_blocks() const;
  // The memory arithmetic of Create (weights, pool, free memory), for the start-up log.
  const std::string& sizing() const;
  void set_return_logits(bool on);

  struct State;  // Device buffers, cuBLAS handle, stream (cuda_worker.cc).

 private:
  explicit CudaWorker(std::unique_ptr<State> state);
  std::unique_ptr<State> state_;
};

// True when a CUDA device is present and usable.
bool CudaDeviceAvailable();

}  // namespace hkv
