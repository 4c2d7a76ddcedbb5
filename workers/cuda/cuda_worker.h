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
// device and stream). Adaptive (adakv) selection runs on one GPU, not across tensor-parallel
// ranks.

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/batch.h"
#include "model/model_config.h"
#include "workers/cuda/cuda_worker_options.h"
#include "workers/worker.h"

namespace hkv {

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
  // Async steps on one GPU (not a tensor-parallel rank, nor with phase profiles or kept
  // positions on): Launch queues the step on the stream and returns; Await waits for the
  // oldest. A step's pending tokens are gathered on the device from the previous step's
  // sampled rows. Execute is Launch then Await (REQUIRES: no step launched).
  bool SupportsAsyncSteps() const override;
  absl::Status Launch(const Batch& batch) override;
  absl::StatusOr<BatchResult> Await() override;
  std::string name() const override;
  // The pool Create sized from free memory (or options.num_blocks).
  absl::StatusOr<KvCapacity> ReportKvCapacity() const override;
  // Keeps the first `num_blocks` blocks of that pool. NOTE: the pool is allocated at Create,
  // where the graph inputs are sized from it; a smaller pool leaves the rest unused.
  absl::Status AllocateKvPool(int64_t num_blocks) override;
  // One rank holds every KV head of a layer only without tensor parallelism: AdaKV's split
  // across a layer's heads needs them all.
  bool SupportsAdaptiveSelection() const override;
  // One GPU holding the whole pool: the device keeps the page tables (device_page_table.h).
  bool AcceptsPageTableDeltas() const override;

  int64_t num_blocks() const;
  // The memory arithmetic of Create (weights, pool, free memory), for the start-up log.
  const std::string& sizing() const;
  void set_return_logits(bool on);
  // Report each compressed prefill's kept positions (SequenceResult::kept_positions; tests):
  // every selection waits for its copy to the host.
  void set_return_kept_positions(bool on);
  // Off: every step runs eagerly, none replays a CUDA graph (benchmarks). On by default.
  void set_graphs_enabled(bool on);
  // Opt-in GPU time per phase of the forward pass (workers/cuda/phase_timer.h); steps run
  // eagerly while it is on. Turning it on clears the totals. Off by default (no cost).
  void set_phase_profile(bool on);
  struct PhaseTime {
    std::string name;
    double calls_per_step = 0;
    double us_per_step = 0;
  };
  // The profiled steps' phases, in launch order, averaged over the steps.
  std::vector<PhaseTime> phase_profile() const;
  // Steps run by graph replay / eagerly, and graphs captured (for tests and the start-up log).
  int64_t graph_steps() const;
  int64_t eager_steps() const;
  int64_t graphs_captured() const;
  // Global KV head of each local (layer, head) [layers * H/size].
  const std::vector<int32_t>& global_heads() const;
  // Maps global block ids [first, first + count) to this worker's pool 0..count-1 (a rank's
  // partition of the engine's pool). count <= num_blocks(); num_blocks() becomes count.
  absl::Status SetBlockRange(int64_t first, int64_t count);

  struct State;  // Device buffers, cuBLAS handle, stream (cuda_worker_state.h).

 private:
  explicit CudaWorker(std::unique_ptr<State> state);
  std::unique_ptr<State> state_;
};

// True when a CUDA device is present and usable.
bool CudaDeviceAvailable();

}  // namespace hkv
