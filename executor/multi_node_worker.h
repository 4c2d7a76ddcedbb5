#pragma once
// Multi-node tensor parallelism: the leader's Worker, which sends each engine step to the
// follower nodes and runs it on its own ranks, and the followers' loop.
//
// One engine (on node 0) schedules for the whole group. Each step goes to every follower over its
// StepConnection (executor/step_channel.h) before node 0 runs it, so that all ranks enter the
// step's NCCL collectives together; each node then runs the step on its local ranks (a
// TensorParallelWorker, or any Worker), and each follower answers with its result. Rank 0 (on
// node 0) holds the LM head: its tokens are the step's. Kept counts of compressed prefills are
// merged: every (layer, KV head) is owned by one rank, which reports it; the others report 0, so
// the element-wise maximum is the owner's count.
//
// Faults: a follower that fails its step, closes its connection, or does not answer within the
// step timeout makes this step and every later one UNAVAILABLE (the engine then fails its
// requests and turns NOT_SERVING). A follower process that exits mid-step is noticed at once (a
// watcher thread polls the connections during each step and cancels the local ranks' wait);
// between steps, Liveness() notices it. A follower whose leader goes away, or whose own step fails,
// leaves its loop with an error (the hkv process then exits non-zero).
//
// Thread-compatible: the engine thread calls Execute and Liveness; the follower loop runs on one
// thread.

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "executor/step_channel.h"
#include "executor/step_codec.h"
#include "workers/worker.h"

namespace hkv {

class StepWatch;

class MultiNodeWorker : public Worker {
 public:
  // `local`: node 0's ranks; `followers`: the connections to nodes 1..N-1 (after the group's
  // setup, see executor/multi_node_group.h).
  MultiNodeWorker(std::unique_ptr<Worker> local,
                  std::vector<std::unique_ptr<StepConnection>> followers,
                  absl::Duration step_timeout);
  // Tells the followers to stop (best effort).
  ~MultiNodeWorker() override;

  const ModelConfig& config() const override { return local_->config(); }
  absl::StatusOr<BatchResult> Execute(const Batch& batch) override;
  std::string name() const override;
  bool SupportsAdaptiveSelection() const override { return local_->SupportsAdaptiveSelection(); }
  absl::Status Liveness() override;
  // The pool the group agreed on when it formed (the smallest node's).
  absl::StatusOr<KvCapacity> ReportKvCapacity() const override {
    return local_->ReportKvCapacity();
  }
  // Only the agreed pool: the other nodes hold exactly that many blocks.
  absl::Status AllocateKvPool(int64_t num_blocks) override;

  Worker* local() { return local_.get(); }

 private:
  absl::Status Fail(absl::Status status);

  std::unique_ptr<Worker> local_;
  std::vector<std::unique_ptr<StepConnection>> followers_;
  std::unique_ptr<StepWatch> watch_;  // cancels the local step when a follower vanishes
  BatchEncoder encoder_;              // page tables as changes since the previous step
  absl::Duration step_timeout_;
  absl::Status dead_;  // set once a step failed: the group cannot be trusted any more
};

// A follower's loop: receives steps from the leader and runs them on `local` until the leader
// sends kStop (OK). UNAVAILABLE when the leader goes away or sends an error; a failed local step
// is reported to the leader and returned.
absl::Status RunStepFollower(Worker* local, StepConnection* leader);

}  // namespace hkv
