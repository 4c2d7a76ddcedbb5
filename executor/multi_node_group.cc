#include "executor/multi_node_group.h"

#include <algorithm>
#include <iostream>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "executor/step_codec.h"
#include "workers/nccl_communicator.h"

namespace hkv {
namespace {

absl::Status CheckShape(const MultiNodeGroupOptions& o) {
  const int32_t nodes = o.layout.world_size;
  const int32_t local = static_cast<int32_t>(o.local.devices.size());
  if (nodes < 2 || o.tensor_parallel_size % nodes != 0 || local != o.tensor_parallel_size / nodes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "a multi-node group of ", nodes, " nodes needs --tensor-parallel-size a multiple of ",
        nodes, " (each node runs tensor_parallel_size / nodes GPUs); got ", o.tensor_parallel_size,
        " ranks with ", local, " GPUs on this node"));
  }
  return absl::OkStatus();
}

absl::Status Annotate(const absl::Status& s, const std::string& what) {
  return absl::Status(s.code(), absl::StrCat(what, ": ", s.message()));
}

}  // namespace

std::string GroupFingerprint(const Model& model, int32_t tensor_parallel_size, int32_t block_size) {
  const ModelConfig& c = model.config;
  return absl::StrCat(
      c.name, " ", c.architecture, " dim ", c.dim, " ffn ", c.hidden_dim, " layers ", c.num_layers,
      " heads ", c.num_heads, "/", c.num_kv_heads, " head_dim ", c.head_dim, " vocab ",
      c.vocab_size, " ctx ", c.max_seq_len, " weights ",
      model.device_dummy_seed.has_value() ? absl::StrCat("random#", *model.device_dummy_seed)
                                          : "checkpoint",
      " tp ", tensor_parallel_size, " block ", block_size);
}

absl::StatusOr<MultiNodeLeader> LeadMultiNodeGroup(std::shared_ptr<const Model> model,
                                                   MultiNodeGroupOptions options) {
  HKV_RETURN_IF_ERROR(CheckShape(options));
  HKV_ASSIGN_OR_RETURN(std::vector<std::unique_ptr<StepConnection>> followers,
                       AcceptFollowers(options.layout, options.fingerprint, options.join_timeout));
  auto fail = [&followers](const absl::Status& s) {
    for (auto& f : followers) f->SendError(std::string(s.message()));
    return s;
  };
  GroupSetup setup;
  absl::StatusOr<std::vector<uint8_t>> id = NcclCommunicator::NewUniqueId();
  if (!id.ok()) return fail(id.status());
  setup.nccl_id = *id;
  setup.head_of_slot = options.local.placement.head_of_slot;
  const std::vector<uint8_t> setup_bytes = EncodeGroupSetup(setup);
  for (auto& f : followers) {
    absl::Status s = f->Send(StepMessage::kSetup, setup_bytes, absl::Seconds(30));
    if (!s.ok())
      return fail(Annotate(s, absl::StrCat("sending the setup to node ", f->peer_node())));
  }
  TensorParallelOptions local = options.local;
  local.first_rank = 0;
  local.world_ranks = options.tensor_parallel_size;
  local.nccl_id = setup.nccl_id;
  absl::StatusOr<std::unique_ptr<TensorParallelWorker>> group =
      TensorParallelWorker::Create(model, local);
  if (!group.ok()) return fail(Annotate(group.status(), "node 0"));
  int64_t blocks = (*group)->blocks_per_rank();
  for (auto& f : followers) {
    absl::StatusOr<std::vector<uint8_t>> ready =
        f->Expect(StepMessage::kReady, options.join_timeout);
    if (!ready.ok()) return fail(ready.status());
    absl::StatusOr<GroupSetup> theirs = DecodeGroupSetup(*ready);
    if (!theirs.ok()) return fail(theirs.status());
    blocks = std::min(blocks, theirs->blocks_per_rank);
  }
  if (absl::Status s = (*group)->SetBlocksPerRank(blocks); !s.ok()) return fail(s);
  GroupSetup start;
  start.blocks_per_rank = blocks;
  const std::vector<uint8_t> start_bytes = EncodeGroupSetup(start);
  for (auto& f : followers) {
    absl::Status s = f->Send(StepMessage::kStart, start_bytes, absl::Seconds(30));
    if (!s.ok()) return fail(Annotate(s, absl::StrCat("starting node ", f->peer_node())));
  }
  MultiNodeLeader out;
  out.local = group->get();
  out.worker = std::make_unique<MultiNodeWorker>(std::move(*group), std::move(followers),
                                                 options.step_timeout);
  return out;
}

absl::Status FollowMultiNodeGroup(std::shared_ptr<const Model> model, MultiNodeGroupOptions options,
                                  const std::function<void(const absl::Status&)>& on_broken) {
  HKV_RETURN_IF_ERROR(CheckShape(options));
  HKV_ASSIGN_OR_RETURN(std::unique_ptr<StepConnection> leader,
                       ConnectToLeader(options.layout, options.fingerprint, options.join_timeout));
  HKV_ASSIGN_OR_RETURN(std::vector<uint8_t> setup_bytes,
                       leader->Expect(StepMessage::kSetup, options.join_timeout));
  absl::StatusOr<GroupSetup> setup = DecodeGroupSetup(setup_bytes);
  if (!setup.ok()) {
    leader->SendError(std::string(setup.status().message()));
    return setup.status();
  }
  const int32_t per_node = static_cast<int32_t>(options.local.devices.size());
  TensorParallelOptions local = options.local;
  local.first_rank = options.layout.rank * per_node;
  local.world_ranks = options.tensor_parallel_size;
  local.nccl_id = setup->nccl_id;
  local.placement = {model->config.num_layers, model->config.num_kv_heads,
                     options.tensor_parallel_size, setup->head_of_slot};
  absl::StatusOr<std::unique_ptr<TensorParallelWorker>> group =
      TensorParallelWorker::Create(model, local);
  if (!group.ok()) {
    const absl::Status s = Annotate(group.status(), absl::StrCat("node ", options.layout.rank));
    leader->SendError(std::string(s.message()));
    return s;
  }
  std::cerr << (*group)->sizing() << "\n";
  GroupSetup ready;
  ready.blocks_per_rank = (*group)->blocks_per_rank();
  HKV_RETURN_IF_ERROR(
      leader->Send(StepMessage::kReady, EncodeGroupSetup(ready), absl::Seconds(30)));
  HKV_ASSIGN_OR_RETURN(std::vector<uint8_t> start_bytes,
                       leader->Expect(StepMessage::kStart, options.join_timeout));
  HKV_ASSIGN_OR_RETURN(GroupSetup start, DecodeGroupSetup(start_bytes));
  HKV_RETURN_IF_ERROR((*group)->SetBlocksPerRank(start.blocks_per_rank));
  std::cerr << "multi-node group: node " << options.layout.rank << " serving ranks "
            << local.first_rank << ".." << local.first_rank + per_node - 1 << " of "
            << options.tensor_parallel_size << ", " << start.blocks_per_rank
            << " KV blocks per rank\n";
  absl::Status result = RunStepFollower(group->get(), leader.get());
  if (!result.ok() && on_broken) on_broken(result);
  return result;
}

}  // namespace hkv
