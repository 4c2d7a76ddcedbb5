#pragma once
// TensorParallelWorker: tensor parallelism inside one process, one thread per GPU.
//
// Each rank is a CudaWorker on its own GPU and its own thread (a CUDA worker's stream, cuBLAS
// handle and graphs belong to the thread and device that made them); the ranks are joined by
// NCCL (workers/nccl_communicator.h). Threads rather than processes: the engine stays a single
// scheduler whose batch every rank reads in place, with no serialization or IPC of steps, and
// NCCL works the same between threads as between processes. (Ranks on other nodes join over
// a gRPC stream: executor/multi_node_group.h.)
//
// A step runs on all ranks at once; each computes its KV heads' attention and its slice of the
// MLP, and the row-parallel layers all-reduce. Every rank then holds the same hidden state;
// rank 0 runs the LM head and samples, and its tokens are the step's. The KV pool is split:
// rank r's blocks are the engine's ids [r * B, (r + 1) * B), and RowPartition() tells the
// engine's KvCacheManager which rank's range each (layer, KV head) draws from.
//
// Faults: a rank whose step fails or that waits longer than the step timeout on its peers
// aborts the communicators; this step and every later one return UNAVAILABLE (the engine then
// fails requests with UNAVAILABLE and turns NOT_SERVING).
//
// A group may also span processes (one per node): each process holds some of the ranks, node 0's
// engine sends it every step (executor/multi_node_worker.h), and only rank 0 has the LM head.
//
// Thread-compatible: one Execute at a time (the engine thread).

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "headkv/rank_assignment.h"
#include "workers/cuda/cuda_worker.h"
#include "workers/worker.h"

namespace hkv {

struct TensorParallelOptions {
  CudaWorkerOptions base;             // device and tp are set per rank
  std::vector<int32_t> devices;       // local rank i runs on devices[i]
  HeadRankAssignment placement;       // KV heads of each rank; head_of_slot empty: contiguous
  // A group that spans processes (executor/multi_node_group.h): this process holds ranks
  // first_rank .. first_rank + devices.size() - 1 of world_ranks, joined by the NCCL id that
  // node 0 made. world_ranks 0: a group of this process alone (devices.size() ranks).
  int32_t first_rank = 0;
  int32_t world_ranks = 0;
  std::vector<uint8_t> nccl_id;
  // Test mode: every rank's pool spans the same ids (each holds all blocks) instead of a
  // partition per rank.
  bool shared_block_ids = false;
};

class TensorParallelWorker : public Worker {
 public:
  static absl::StatusOr<std::unique_ptr<TensorParallelWorker>> Create(
      std::shared_ptr<const Model> model, const TensorParallelOptions& options);
  ~TensorParallelWorker() override;

  const ModelConfig& config() const override;
  absl::StatusOr<BatchResult> Execute(const Batch& batch) override;
  std::string name() const override;
  bool SupportsAdaptiveSelection() const override { return false; }
  // Aborts the communicators from the rank threads' side: the step in progress (and every later
  // one) fails UNAVAILABLE.
  void CancelStep() override;
  // The engine's pool: num_blocks() blocks of one rank's block size.
  absl::StatusOr<KvCapacity> ReportKvCapacity() const override;
  // A pool of `num_blocks` = ranks x blocks per rank (blocks per rank when ids are shared).
  absl::Status AllocateKvPool(int64_t num_blocks) override;

  // Ranks of the whole group (all processes).
  int32_t size() const;
  // Blocks of the engine's pool (ranks x blocks_per_rank(), or blocks_per_rank() when ids are
  // shared) and of each rank's.
  int64_t num_blocks() const;
  int64_t blocks_per_rank() const;
  // Shrinks every rank's pool to `blocks` (a multi-node group agrees on the smallest rank's);
  // global rank r then owns ids [r * blocks, (r + 1) * blocks). Call before the first step.
  absl::Status SetBlocksPerRank(int64_t blocks);
  // Rank of each (layer, KV head) [layers * KV heads], for KvCacheConfig::row_partition.
  std::vector<int32_t> RowPartition() const;
  std::string sizing() const;
  void set_return_logits(bool on);

  struct Impl;

 private:
  explicit TensorParallelWorker(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace hkv
