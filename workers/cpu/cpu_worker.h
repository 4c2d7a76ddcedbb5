#pragma once
// CpuWorker: the fp32 reference backend. Runs a Llama-family model for one engine step over a
// per-head paged KV pool held in host memory (layout below), including HeadKV compressed
// prefill (full K/V of one layer in scratch, then only the selected tokens into each head's
// blocks; or, chunked, the full K/V in the rows until the last chunk compacts them in place).
//
//   k_pool_ / v_pool_: [num_blocks, block_size, head_dim] fp32. A block holds block_size tokens
//   of ONE KV head of ONE layer; the Batch's CSR row (seq, layer, kv_head) lists its blocks.
//
// Thread-compatible: one Execute at a time (the engine thread). Sequences of a batch run in
// parallel on the worker's own pool; each writes only its own blocks.

#include <cstring>
#include <deque>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/batch.h"
#include "common/page_table_mirror.h"
#include "common/thread_pool.h"
#include "model/model_config.h"
#include "workers/pending_tokens.h"
#include "workers/token_history.h"
#include "workers/worker.h"

namespace hkv {

class CpuWorker : public Worker {
 public:
  CpuWorker(std::shared_ptr<const Model> model, int32_t num_blocks, int32_t block_size,
            int32_t num_threads);

  const ModelConfig& config() const override { return model_->config; }
  absl::StatusOr<BatchResult> Execute(const Batch& batch) override;
  std::string name() const override { return "cpu"; }
  bool AcceptsPageTableDeltas() const override { return true; }
  // Async steps run at Launch, on the caller's thread (the results wait for Await): the
  // engine's overlap, and its pending tokens, exercised on the CPU.
  bool SupportsAsyncSteps() const override { return true; }
  absl::Status Launch(const Batch& batch) override;
  absl::StatusOr<BatchResult> Await() override;
  // The host sets no limit of its own: up to 2^31 - 1 blocks of fp32 K and V.
  absl::StatusOr<KvCapacity> ReportKvCapacity() const override;
  // Replaces the pool with one of `num_blocks` zeroed blocks.
  absl::Status AllocateKvPool(int64_t num_blocks) override;

  // Keep the sampled position's logits in each SequenceResult (tests, numerical checks).
  void set_return_logits(bool on) { return_logits_ = on; }
  // Report each compressed prefill's kept positions (SequenceResult::kept_positions; tests).
  void set_return_kept_positions(bool on) { return_kept_positions_ = on; }
  int32_t num_blocks() const { return num_blocks_; }
  // Returns the K (V) vector [head_dim] cached in slot `offset` of `block` (tests, numerical
  // checks). REQUIRES: 0 <= block < num_blocks(), 0 <= offset < block_size().
  const float* KeyAt(BlockId block, int32_t offset) const {
    return k_pool_.data() + (static_cast<int64_t>(block) * block_size_ + offset) * head_dim_;
  }
  const float* ValueAt(BlockId block, int32_t offset) const {
    return v_pool_.data() + (static_cast<int64_t>(block) * block_size_ + offset) * head_dim_;
  }
  // Copies the K and V cached in slot `from_offset` of `from` to slot `to_offset` of `to`
  // (tests: a cache rebuilt to hold the positions another worker kept).
  // REQUIRES: both blocks < num_blocks(), both offsets < block_size().
  void CopySlot(BlockId from, int32_t from_offset, BlockId to, int32_t to_offset) {
    std::memcpy(KeySlot(to, to_offset), KeySlot(from, from_offset), head_dim_ * sizeof(float));
    std::memcpy(ValueSlot(to, to_offset), ValueSlot(from, from_offset), head_dim_ * sizeof(float));
  }
  int32_t block_size() const { return block_size_; }

 private:
  absl::Status CheckBatch(const Batch& batch) const;
  absl::Status RunSequence(const Batch& batch, int64_t index, ThreadPool* pool,
                           SequenceResult* result);
  // Plain rows of layer `layer`: stores the step's K/V and attends over each row.
  // q: [T, num_heads, head_dim]; k, v: [T, num_kv_heads, head_dim]; attn like q. A probing
  // sequence also gets this layer's top positions in result->probe_*.
  absl::Status StoreAndAttend(const Batch& batch, int64_t index, int32_t layer, const float* q,
                              const float* k, const float* v, float* scores, float* attn,
                              SequenceResult* result);
  // Selects each head's tokens of layer `layer` from the scratch K/V and writes them to the
  // pool. q_window: [w, num_heads, head_dim]; k, v: [n, num_kv_heads, head_dim].
  absl::Status SelectAndStore(const Batch& batch, int64_t index, int32_t layer,
                              const float* q_window, const float* k, const float* v, int32_t n,
                              SequenceResult* result);
  // Chunked compressed prefill, at its last chunk (after StoreAndAttend): the rows of layer
  // `layer` hold the whole prompt; selects each head's tokens from them and compacts the kept
  // ones into the row's first slots, in order. q_window: [w, num_heads, head_dim].
  absl::Status SelectInPlace(const Batch& batch, int64_t index, int32_t layer,
                             const float* q_window, SequenceResult* result);
  // Each KV head's capacity (window excluded) at `layer`: the plan's, or adakv's split of the
  // layer budget by `scores` [num_kv_heads][n - w].
  absl::StatusOr<std::vector<int32_t>> LayerCaps(
      const SequenceStep& step, int32_t layer, const std::vector<std::vector<float>>& scores) const;
  float* KeySlot(BlockId block, int32_t offset) {
    return k_pool_.data() + (static_cast<int64_t>(block) * block_size_ + offset) * head_dim_;
  }
  float* ValueSlot(BlockId block, int32_t offset) {
    return v_pool_.data() + (static_cast<int64_t>(block) * block_size_ + offset) * head_dim_;
  }

  std::shared_ptr<const Model> model_;
  int32_t num_blocks_;
  const int32_t block_size_;
  const int32_t head_dim_;
  std::vector<float> k_pool_;
  std::vector<float> v_pool_;
  std::vector<float> inv_freq_;
  ThreadPool pool_;
  bool return_logits_ = false;
  bool return_kept_positions_ = false;
  PageTableMirror tables_;    // Every sequence's rows, from the steps' deltas (Batch::kv_delta).
  TokenHistories histories_;  // Penalised sequences' tokens; written by Execute before sampling.
  PendingTokens pending_;     // The last launched step's samples (async steps).
  std::deque<absl::StatusOr<BatchResult>> launched_;  // Results of launched steps, oldest first.
};

}  // namespace hkv
