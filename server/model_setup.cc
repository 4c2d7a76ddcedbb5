#include "server/model_setup.h"

#include <algorithm>
#include <iostream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/status_macros.h"
#include "headkv/head_scores.h"
#include "model/hf_config.h"
#include "server/fault_injection.h"
#ifdef HKV_WITH_CUDA
#include <cuda_runtime.h>

#include "executor/multi_node_group.h"
#include "executor/tensor_parallel_worker.h"
#include "headkv/head_budget_planner.h"
#include "headkv/rank_assignment.h"
#include "workers/cuda/cuda_worker.h"
#endif

namespace hkv {
namespace {

absl::Status CheckMultiNodeShape(const ServerConfig& config, const DistLayout& layout) {
  if (config.tensor_parallel_size < layout.world_size ||
      config.tensor_parallel_size % layout.world_size != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("a multi-node group of ", layout.world_size,
                     " nodes needs --tensor-parallel-size a "
                     "multiple of ",
                     layout.world_size,
                     " (each node runs tensor_parallel_size / world_size "
                     "GPUs); got ",
                     config.tensor_parallel_size));
  }
  return absl::OkStatus();
}

#ifdef HKV_WITH_CUDA
absl::StatusOr<HeadRankAssignment> TensorParallelPlacement(const ServerConfig& config,
                                                           const ModelConfig& m) {
  const int32_t tp = config.tensor_parallel_size;
  if (config.tp_head_placement == "contiguous" || config.head_scores.empty()) {
    return HeadRankAssignment{};  // empty: Megatron's contiguous order
  }
  // Balanced: even out each rank's KV under the HeadKV plan at the default budget.
  HKV_ASSIGN_OR_RETURN(HeadScores scores, LoadHeadScores(config.head_scores));
  HKV_RETURN_IF_ERROR(CheckShape(scores, m.num_layers, m.num_heads));
  KvPolicy p;
  p.name = KvPolicyName::kHeadKv;
  p.budget = config.default_kv_budget;
  p.granularity = Granularity::kKvHead;
  p.scores = std::make_shared<const HeadScores>(GroupByKvHead(scores, m.num_kv_heads));
  HKV_RETURN_IF_ERROR(ValidatePolicy(p));
  HKV_ASSIGN_OR_RETURN(HeadBudgetPlan plan,
                       HeadBudgetPlanner::Plan(p, m.num_layers, m.num_kv_heads));
  std::vector<int32_t> load(plan.capacity.size());
  for (size_t i = 0; i < load.size(); ++i) load[i] = plan.capacity[i] + plan.window;
  HKV_ASSIGN_OR_RETURN(HeadRankAssignment a,
                       BalancedAssignment(load, m.num_layers, m.num_kv_heads, tp));
  HKV_ASSIGN_OR_RETURN(HeadRankAssignment contiguous,
                       ContiguousAssignment(m.num_layers, m.num_kv_heads, tp));
  std::cerr << absl::StrFormat(
      "tensor parallel: balanced head placement (HeadKV B=%d): KV imbalance %.3f (contiguous "
      "%.3f)\n",
      config.default_kv_budget, Imbalance(RankLoads(a, load)),
      Imbalance(RankLoads(contiguous, load)));
  return a;
}

// This node's ranks' options: GPUs 0..local_ranks-1 of this machine.
absl::StatusOr<TensorParallelOptions> LocalRankOptions(const ServerConfig& config,
                                                       const ModelConfig& m, int32_t local_ranks) {
  int gpus = 0;
  if (cudaGetDeviceCount(&gpus) != cudaSuccess) gpus = 0;
  if (gpus < local_ranks) {
    return absl::ResourceExhaustedError(
        absl::StrCat("--tensor-parallel-size ", config.tensor_parallel_size, " needs ", local_ranks,
                     " GPUs on this node; it has ", gpus));
  }
  TensorParallelOptions o;
  o.base = CudaWorkerOptionsFor(config, m);
  for (int32_t r = 0; r < local_ranks; ++r) o.devices.push_back(r);
  return o;
}

MultiNodeGroupOptions GroupOptions(const ServerConfig& config, const DistLayout& layout,
                                   const Model& model, TensorParallelOptions local) {
  MultiNodeGroupOptions g;
  g.layout = layout;
  g.tensor_parallel_size = config.tensor_parallel_size;
  g.local = std::move(local);
  g.fingerprint = GroupFingerprint(model, config.tensor_parallel_size, config.block_size);
  g.join_timeout = absl::Seconds(config.dist_join_timeout_s);
  g.step_timeout = g.local.base.tp.step_timeout;
  return g;
}

absl::StatusOr<std::unique_ptr<TensorParallelWorker>> MakeTensorParallelWorker(
    const ServerConfig& config, std::shared_ptr<const Model> model) {
  HKV_ASSIGN_OR_RETURN(TensorParallelOptions o,
                       LocalRankOptions(config, model->config, config.tensor_parallel_size));
  HKV_ASSIGN_OR_RETURN(o.placement, TensorParallelPlacement(config, model->config));
  HKV_ASSIGN_OR_RETURN(std::unique_ptr<TensorParallelWorker> group,
                       TensorParallelWorker::Create(std::move(model), o));
  std::cerr << group->sizing() << "\n";
  return group;
}
#endif

// The serving worker for the resolved config: one device, an in-process tensor-parallel group,
// or node 0 of a multi-node group. Sets *row_partition for tensor parallelism.
absl::StatusOr<std::unique_ptr<Worker>> MakeServingWorker(const ServerConfig& config,
                                                          const DistLayout& layout,
                                                          std::shared_ptr<const Model> model,
                                                          std::vector<int32_t>* row_partition) {
  const int32_t tp = config.tensor_parallel_size;
  const bool multi_node = layout.world_size > 1;
  [[maybe_unused]] const ModelConfig& m = model->config;
  std::unique_ptr<Worker> worker;
  if (tp == 1 && !multi_node) {
    HKV_ASSIGN_OR_RETURN(worker, MakeWorker(config, model));
  }
#ifdef HKV_WITH_CUDA
  if (multi_node) {
    HKV_ASSIGN_OR_RETURN(TensorParallelOptions local,
                         LocalRankOptions(config, m, tp / layout.world_size));
    HKV_ASSIGN_OR_RETURN(local.placement, TensorParallelPlacement(config, m));
    std::cerr << "multi-node group: node 0 waiting for " << layout.world_size - 1
              << " node(s) on port " << layout.port << "\n";
    HKV_ASSIGN_OR_RETURN(
        MultiNodeLeader leader,
        LeadMultiNodeGroup(model, GroupOptions(config, layout, *model, std::move(local))));
    std::cerr << leader.local->sizing() << "\n";
    *row_partition = leader.local->RowPartition();
    worker = std::move(leader.worker);
  } else if (tp > 1) {
    HKV_ASSIGN_OR_RETURN(std::unique_ptr<TensorParallelWorker> group,
                         MakeTensorParallelWorker(config, model));
    *row_partition = group->RowPartition();
    worker = std::move(group);
  }
#endif
  return worker;
}

// One way: the worker reports what its pool can hold, the options decide the size (on a GPU
// the worker's memory plan already applied them), and the worker takes that pool.
absl::StatusOr<KvPoolSizing> SizeWorkerPool(const ServerConfig& config, const ModelConfig& m,
                                            Worker& worker) {
  HKV_ASSIGN_OR_RETURN(const KvCapacity capacity, worker.ReportKvCapacity());
  ServerConfig sized = config;
  if (config.device != "cpu") sized.kv_pool_blocks = capacity.max_blocks;
  const int32_t kv_dtype_bytes =
      static_cast<int32_t>(capacity.bytes_per_block / (2LL * m.head_dim * config.block_size));
  HKV_ASSIGN_OR_RETURN(KvPoolSizing sizing, SizeKvPool(sized, m, kv_dtype_bytes));
  if (sizing.num_blocks > capacity.max_blocks) {
    return absl::ResourceExhaustedError(absl::StrCat("a KV pool of ", sizing.num_blocks,
                                                     " blocks does not fit the worker's ",
                                                     capacity.max_blocks));
  }
  HKV_RETURN_IF_ERROR(worker.AllocateKvPool(sizing.num_blocks));
  return sizing;
}

}  // namespace

absl::StatusOr<EngineBundle> BuildEngine(const ServerConfig& requested, const DistLayout& layout) {
  HKV_RETURN_IF_ERROR(ValidateServerConfig(requested));
  const bool multi_node = layout.world_size > 1;
  if (multi_node) {
    if (layout.rank != 0) {
      return absl::InvalidArgumentError("only node 0 of a multi-node group runs the engine");
    }
    HKV_RETURN_IF_ERROR(CheckMultiNodeShape(requested, layout));
#ifndef HKV_WITH_CUDA
    return absl::InvalidArgumentError(
        "multi-node serving needs the CUDA worker, which this "
        "build lacks");
#endif
  }
  ServerConfig config = requested;
  if (config.device == "auto" && config.dummy_weights) {
    // The device decides where random weights are built, so resolve it from the config first.
    HKV_ASSIGN_OR_RETURN(ModelConfig shape, LoadHfConfig(config.model));
    config.device = ResolveDevice(config.device, shape);
  }
  const int32_t tp = config.tensor_parallel_size;
  if (tp > 1 && config.device == "cpu") {
    return absl::InvalidArgumentError("--tensor-parallel-size > 1 needs --device cuda");
  }
#ifndef HKV_WITH_CUDA
  if (tp > 1) {
    return absl::InvalidArgumentError(
        "--tensor-parallel-size > 1 needs the CUDA worker, which this build lacks");
  }
#endif
  if (tp > 1 || multi_node) config.device = "cuda";
  EngineBundle bundle;
  HKV_ASSIGN_OR_RETURN(
      bundle.loaded,
      LoadModelAndTokenizer(config.model, config.tokenizer, config.dummy_weights,
                            config.device == "cuda", config.max_model_len, config.chat_template));
  if (config.device == "auto") {
    config.device = ResolveDevice(config.device, bundle.loaded.model->config);
  }
  if (requested.device == "auto") std::cerr << "device: " << config.device << " (auto)\n";
  const ModelConfig& m = bundle.loaded.model->config;
  std::vector<int32_t> row_partition;
  HKV_ASSIGN_OR_RETURN(std::unique_ptr<Worker> worker,
                       MakeServingWorker(config, layout, bundle.loaded.model, &row_partition));
  HKV_ASSIGN_OR_RETURN(bundle.sizing, SizeWorkerPool(config, m, *worker));
  EngineOptions options;
  options.scheduler.max_batch_tokens = config.max_batch_tokens;
  options.scheduler.pacing.max_step = absl::Milliseconds(config.max_step_ms);
  options.scheduler.pacing.max_prefill_share = config.max_prefill_share;
  options.scheduler.max_seqs = config.max_seqs;
  options.scheduler.max_queue = config.max_queue;
  options.page_table_deltas = config.page_table_deltas;
  options.async_scheduling = config.async_scheduling;
  options.kv.num_blocks = static_cast<int32_t>(bundle.sizing.num_blocks);
  options.kv.block_size = config.block_size;
  if (tp > 1) {
    options.kv.num_partitions = tp;
    options.kv.row_partition = std::move(row_partition);
  }
  options.kv_bytes_per_token_row = bundle.sizing.bytes_per_token_row;
  options.default_policy = config.default_kv_policy;
  options.default_budget = config.default_kv_budget;
  options.stall_timeout = absl::Seconds(config.engine_stall_timeout_s);
  options.stop_limits.max_strings = config.max_stop_strings;
  options.stop_limits.max_bytes = config.max_stop_bytes;
  options.stop_limits.max_token_ids = config.max_stop_token_ids;
  options.max_n = config.max_n;
  options.sampling_defaults = bundle.loaded.sampling_defaults;
  options.liveness_timeout = absl::Seconds(config.engine_liveness_timeout_s);
  options.fault_loop_stall = EngineLoopStallFromEnv();
  if (!config.head_scores.empty()) {
    HKV_ASSIGN_OR_RETURN(HeadScores scores, LoadHeadScores(config.head_scores));
    HKV_RETURN_IF_ERROR(CheckShape(scores, m.num_layers, m.num_heads));
    options.head_scores = std::make_shared<const HeadScores>(std::move(scores));
  }
  HKV_RETURN_IF_ERROR(ParsePolicyName(config.default_kv_policy).status());
  worker = MaybeInjectWorkerFaults(std::move(worker));
  bundle.engine = std::make_unique<Engine>(options, std::move(worker), bundle.loaded.tokenizer);
  // Check the default policy plans (e.g. headkv without scores) before serving anything.
  HKV_RETURN_IF_ERROR(
      bundle.engine
          ->PlanFor(config.default_kv_policy, config.default_kv_budget, options.default_beta)
          .status());
  return bundle;
}

absl::Status RunFollowerNode(const ServerConfig& requested, const DistLayout& layout,
                             const std::function<void(const absl::Status&)>& on_broken) {
  HKV_RETURN_IF_ERROR(ValidateServerConfig(requested));
  if (layout.world_size < 2 || layout.rank < 1) {
    return absl::InvalidArgumentError("a follower is node 1.. of a multi-node group");
  }
  HKV_RETURN_IF_ERROR(CheckMultiNodeShape(requested, layout));
#ifdef HKV_WITH_CUDA
  HKV_ASSIGN_OR_RETURN(
      LoadedModel loaded,
      LoadModelAndTokenizer(requested.model, requested.tokenizer, requested.dummy_weights,
                            /*dummy_on_device=*/true, requested.max_model_len));
  HKV_ASSIGN_OR_RETURN(TensorParallelOptions local,
                       LocalRankOptions(requested, loaded.model->config,
                                        requested.tensor_parallel_size / layout.world_size));
  std::cerr << "multi-node group: node " << layout.rank << " joining " << layout.leader_host << ":"
            << layout.port << "\n";
  return FollowMultiNodeGroup(
      loaded.model, GroupOptions(requested, layout, *loaded.model, std::move(local)), on_broken);
#else
  return absl::InvalidArgumentError(
      "multi-node serving needs the CUDA worker, which this build "
      "lacks");
#endif
}

}  // namespace hkv
