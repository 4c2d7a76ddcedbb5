#pragma once
// NcclCommunicator: one rank's NCCL communicator for tensor parallelism, with the waits bounded
// so that a rank that dies or hangs cannot hang the others forever.
//
// Two ways to form a group:
//   - one process, one thread per GPU: CreateAll(devices) (ncclCommInitAll);
//   - one process per node (Kubernetes LeaderWorkerSet): node 0 makes NewUniqueId(), sends it to
//     the others (executor/multi_node_group.h), and every process calls CreateGroup() for its
//     GPUs (or Create() for one rank).
// Collectives are enqueued on the caller's stream (and may be captured in a CUDA graph); WaitFor()
// replaces cudaStreamSynchronize: it polls the stream and NCCL's asynchronous error, and on an
// error or after `timeout` aborts the communicator (so the collective returns on every live rank)
// and reports UNAVAILABLE / DEADLINE_EXCEEDED.
//
// Thread-compatible: a communicator is used by one thread (its rank's) at a time.

#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "kernels/dtype.h"

namespace hkv {

class NcclCommunicator {
 public:
  ~NcclCommunicator();
  NcclCommunicator(const NcclCommunicator&) = delete;
  NcclCommunicator& operator=(const NcclCommunicator&) = delete;

  // A fresh group id (128 bytes) for Create().
  static absl::StatusOr<std::vector<uint8_t>> NewUniqueId();
  // Joins rank `rank` of `world` on the current CUDA device; blocks until every rank joined.
  static absl::StatusOr<std::unique_ptr<NcclCommunicator>> Create(const std::vector<uint8_t>& id,
                                                                  int32_t world, int32_t rank);
  // One communicator per device of this process, rank i on devices[i].
  static absl::StatusOr<std::vector<std::unique_ptr<NcclCommunicator>>> CreateAll(
      const std::vector<int32_t>& devices);
  // This process's part of a group that spans processes: ranks first_rank + i on devices[i] of
  // `world` ranks that share `id`; blocks until every rank of every process joined.
  static absl::StatusOr<std::vector<std::unique_ptr<NcclCommunicator>>> CreateGroup(
      const std::vector<uint8_t>& id, int32_t world, int32_t first_rank,
      const std::vector<int32_t>& devices);

  // In-place sum over ranks of `count` elements of `dtype`, enqueued on `stream`.
  absl::Status AllReduceSum(void* buffer, int64_t count, kernels::DType dtype, cudaStream_t stream);
  // Rank `root`'s `bytes` bytes to every rank, in place, enqueued on `stream`.
  absl::Status Broadcast(void* buffer, int64_t bytes, int32_t root, cudaStream_t stream);
  // Waits for `stream`; see the header comment. Once `*cancel` (may be null) turns true, aborts
  // and returns UNAVAILABLE.
  absl::Status WaitFor(cudaStream_t stream, absl::Duration timeout,
                       const std::atomic<bool>* cancel = nullptr);
  // Ends the communicator's pending work on this rank (peers' collectives then fail).
  void Abort();

  int32_t rank() const { return rank_; }
  int32_t world() const { return world_; }
  bool aborted() const { return aborted_; }

 private:
  struct Impl;
  NcclCommunicator(std::unique_ptr<Impl> impl, int32_t rank, int32_t world);
  std::unique_ptr<Impl> impl_;
  int32_t rank_, world_;
  bool aborted_ = false;
};

}  // namespace hkv
