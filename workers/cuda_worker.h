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
// Host overhead: every step's inputs (ids, positions, KV slots, page tables, the decode work
// lists of all layers, sampling parameters) are packed into one pinned buffer and sent in one
// copy. Decode-only steps of up to `cuda_graph_max_batch` sequences replay a CUDA graph of the
// whole forward pass and sampling, captured on first use per padded batch size; padding
// sequences write no KV (slot -1) and their samples are dropped.
//
// Memory: weights, then activations for `max_step_tokens` tokens and the decode workspace
// for `max_seqs` sequences are allocated at Create; the KV pool takes what the utilization
// target leaves. A step larger than planned grows the activations (the graphs are then
// re-captured) or fails with RESOURCE_EXHAUSTED.
//
// Errors: CUDA and cuBLAS failures are UNAVAILABLE (the device is unusable; the engine stops
// serving); malformed batches are INVALID_ARGUMENT.
//
// Thread-compatible: one Execute at a time, on the thread that created the worker (its CUDA
// device and stream). Adaptive (adakv) selection is not supported here yet.

#include <atomic>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/batch.h"
#include "workers/model_config.h"
#include "workers/worker.h"

namespace hkv {

class NcclCommunicator;

// Tensor parallelism (Megatron: q/k/v and gate/up column-parallel, o and down row-parallel with
// one all-reduce each per layer). Rank `rank` owns slots [rank * H/size, (rank+1) * H/size) of
// every layer's KV heads; `head_of_slot` [layers * H] says which original head each slot holds
// (headkv/rank_assignment.h; empty: contiguous). Steps take the whole batch (rows of every KV
// head, global block ids) and use their own heads' rows.
struct CudaTensorParallel {
  int32_t rank = 0;
  int32_t size = 1;
  NcclCommunicator* comm = nullptr;  // Not owned; required when size > 1.
  std::vector<int32_t> head_of_slot;
  absl::Duration step_timeout = absl::Minutes(5);  // A step longer than this aborts the group.
  // Set by another thread when a peer is known to be gone: the step in progress aborts the
  // group at once instead of waiting out step_timeout. Not owned; may be null.
  const std::atomic<bool>* cancel = nullptr;
};

struct CudaWorkerOptions {
  int32_t device = 0;
  int32_t block_size = 16;
  int64_t num_blocks = 0;                          // 0: size the pool from free memory.
  double gpu_memory_utilization = 0.9;             // Share of total device memory hkv may use.
  int64_t activation_reserve_bytes = 512LL << 20;  // Kept free beyond the planned buffers.
  int32_t max_step_tokens = 8192;      // Tokens of the largest step (activations sized for it).
  int32_t max_seqs = 256;              // Sequences of the largest step (decode workspace).
  int32_t cuda_graph_max_batch = 256;  // Largest decode batch replayed as a graph; 0: eager.
  CudaTensorParallel tp;
};

class CudaWorker : public Worker {
 public:
  // Uploads the weights, then allocates the KV pool. RESOURCE_EXHAUSTED (saying by how much)
  // when the model or the pool does not fit; UNAVAILABLE without a usable GPU.
  static absl::StatusOr<std::unique_ptr<CudaWorker>> Create(std::shared_ptr<const Model> model,
                                                            const CudaWorkerOptions& options);
  ~CudaWorker() override;
  // OK when the kernels serve the model's shapes (head_dim 64/128, GQA group <= 8, no q/k/v
  // bias, hidden sizes multiple of 8); INVALID_ARGUMENT naming the first that does not.
  static absl::Status Supports(const ModelConfig& config);

  const ModelConfig& config() const override;
  absl::StatusOr<BatchResult> Execute(const Batch& batch) override;
  std::string name() const override;
  bool SupportsAdaptiveSelection() const override { return false; }

  int64_t num_blocks() const;
  // The memory arithmetic of Create (weights, pool, free memory), for the start-up log.
  const std::string& sizing() const;
  void set_return_logits(bool on);
  // Steps run by graph replay / eagerly, and graphs captured (for tests and the start-up log).
  int64_t graph_steps() const;
  int64_t eager_steps() const;
  int64_t graphs_captured() const;
  // Global KV head of each local (layer, head) [layers * H/size].
  const std::vector<int32_t>& global_heads() const;
  // Maps global block ids [first, first + count) to this worker's pool 0..count-1 (a rank's
  // partition of the engine's pool). count <= num_blocks(); num_blocks() becomes count.
  absl::Status SetBlockRange(int64_t first, int64_t count);

  struct State;  // Device buffers, cuBLAS handle, stream (cuda_worker.cc).

 private:
  explicit CudaWorker(std::unique_ptr<State> state);
  std::unique_ptr<State> state_;
};

// True when a CUDA device is present and usable.
bool CudaDeviceAvailable();

}  // namespace hkv
