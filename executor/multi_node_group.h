#pragma once
// Forming a tensor-parallel group that spans nodes (one hkv process per node, e.g. the pods of a
// Kubernetes LeaderWorkerSet), and running its followers.
//
// Node 0 (the leader) runs the engine; nodes 1..N-1 (followers) run only their GPUs' ranks. Each
// node holds tensor_parallel_size / N consecutive ranks (node k: ranks k*G .. k*G + G - 1 on
// its GPUs 0..G-1). Setup, over the step connections (executor/step_channel.h):
//   1. followers connect to the leader and join (same protocol version, world size and
//      configuration fingerprint);
//   2. leader -> followers kSetup: a fresh NCCL id and the head placement (chosen on node 0
//      only, so every node shards the weights the same way);
//   3. every node creates its ranks, whose NCCL communicators join across nodes;
//   4. followers -> leader kReady: blocks per rank their GPUs can hold; leader -> followers
//      kStart: the smallest, which every rank then uses (the engine's pool is ranks x that);
//   5. steps (executor/multi_node_worker.h) until the leader sends kStop.
// A node that fails during setup sends kError to the other side, which fails too.

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "executor/dist_bootstrap.h"
#include "executor/multi_node_worker.h"
#include "executor/tensor_parallel_worker.h"

namespace hkv {

struct MultiNodeGroupOptions {
  DistLayout layout;                 // this node's place (layout.rank is the node index)
  int32_t tensor_parallel_size = 0;  // ranks of the whole group
  // This node's ranks: base options and devices (tensor_parallel_size / world_size of them).
  // first_rank, world_ranks and nccl_id are filled in here; placement is the leader's
  // head placement (ignored on followers, which receive the leader's).
  TensorParallelOptions local;
  std::string fingerprint;  // equal on every node (see GroupFingerprint)
  absl::Duration join_timeout = absl::Minutes(10);
  absl::Duration step_timeout = absl::Minutes(5);
};

// What must agree between nodes for them to form one group: the model's shape and weights'
// origin, the group size and the KV block size.
std::string GroupFingerprint(const Model& model, int32_t tensor_parallel_size, int32_t block_size);

struct MultiNodeLeader {
  std::unique_ptr<MultiNodeWorker> worker;  // the engine's worker
  TensorParallelWorker* local = nullptr;    // owned by `worker`: pool size, partition, sizing
};

// Node 0: forms the group and returns the engine's worker.
absl::StatusOr<MultiNodeLeader> LeadMultiNodeGroup(std::shared_ptr<const Model> model,
                                                   MultiNodeGroupOptions options);

// Nodes 1..N-1: joins the group, then runs steps until the leader stops it (OK) or the group
// breaks (the error). `on_broken` (may be empty) hears of a break before this node's ranks are
// torn down, which may block on a GPU whose collective lost its peer.
absl::Status FollowMultiNodeGroup(std::shared_ptr<const Model> model, MultiNodeGroupOptions options,
                                  const std::function<void(const absl::Status&)>& on_broken = {});

}  // namespace hkv
