#include "server/model_setup.h"

#include <sys/stat.h>
#include <unistd.h>

#include <iostream>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/quote.h"
#include "common/status_macros.h"
#include "headkv/head_scores.h"
#include "model/dummy_weights.h"
#include "model/generation_config.h"
#include "model/hf_config.h"
#include "model/hf_loader.h"
#include "model/llama2c_loader.h"
#include "server/fault_injection.h"
#include "tokenizer/hf_tokenizer.h"
#include "tokenizer/llama2c_tokenizer.h"
#include "workers/cpu/cpu_worker.h"
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

#ifdef HKV_WITH_CUDA
// --cuda-prefill-kernel, already checked by ValidateServerConfig.
CudaPrefillKernel PrefillKernelOf(const ServerConfig& config) {
  if (config.cuda_prefill_kernel == "mma") return CudaPrefillKernel::kMmaSync;
  if (config.cuda_prefill_kernel == "wgmma") return CudaPrefillKernel::kWgmma;
  return CudaPrefillKernel::kAuto;
}
#endif

bool IsDirectory(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

std::string Dirname(const std::string& path) {
  const size_t slash = path.rfind('/');
  return slash == std::string::npos ? "." : path.substr(0, slash);
}

// A special token the template writes as text but the vocabulary does not hold as one token
// (tokenizer_config.json and tokenizer.json disagree) is tokenized as plain text: the model
// then sees a prompt it was not tuned on, so say so at load. Not a refusal, as in transformers.
void WarnAboutSpecialTokens(const LoadedModel& loaded) {
  if (loaded.tokenizer == nullptr || loaded.chat == nullptr) return;
  const ChatSpecialTokens& t = loaded.chat->tokens();
  for (const auto& [name, text] :
       {std::pair<const char*, const std::optional<std::string>&>("bos_token", t.bos_token),
        {"eos_token", t.eos_token}}) {
    if (!text.has_value() || text->empty()) continue;
    auto ids = loaded.tokenizer->TryEncode(*text, /*add_bos=*/false, EncodeControl());
    if (ids.ok() && ids->size() != 1) {
      std::cerr << "warning: the chat template's " << name << " " << QuoteForError(*text)
                << " is not one token of the vocabulary (" << ids->size() << " tokens)\n";
    }
  }
}

// Loads `out->chat` from `dir` (or the `override_path` file). A model without a template has
// no chat; one whose template does not parse is served without chat, with a warning; an
// explicit --chat-template that fails is an error.
absl::Status LoadChat(const std::string& dir, const std::string& override_path, LoadedModel* out) {
  auto chat = LoadChatTemplate(dir, override_path);
  if (chat.ok()) {
    out->chat = std::move(*chat);
    WarnAboutSpecialTokens(*out);
    return absl::OkStatus();
  }
  if (!override_path.empty()) return chat.status();
  if (chat.status().code() != absl::StatusCode::kNotFound) {
    std::cerr << "warning: serving without chat: " << chat.status().message() << "\n";
  }
  return absl::OkStatus();
}

// The tokenizer of a random-weights model: a llama2.c one named by `tokenizer_path`, or the
// tokenizer.json (and chat template) of a Hugging Face directory, or none.
absl::Status LoadDummyTokenizer(const std::string& model_path, const std::string& tokenizer_path,
                                const std::string& chat_template, LoadedModel* out) {
  if (!tokenizer_path.empty()) {
    HKV_ASSIGN_OR_RETURN(std::unique_ptr<Tokenizer> tok,
                         LoadLlama2cTokenizer(tokenizer_path, out->model->config.vocab_size));
    out->tokenizer = std::move(tok);
  } else if (IsDirectory(model_path)) {
    auto tok = LoadHfTokenizer(model_path);
    if (tok.ok()) {
      out->tokenizer = std::move(*tok);
      HKV_RETURN_IF_ERROR(LoadChat(model_path, chat_template, out));
    } else if (tok.status().code() != absl::StatusCode::kNotFound) {
      return tok.status();
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<LoadedModel> LoadModelAndTokenizerImpl(const std::string& model_path,
                                                      const std::string& tokenizer_path,
                                                      bool dummy_weights, bool dummy_on_device,
                                                      const std::string& chat_template);

}  // namespace

absl::StatusOr<LoadedModel> LoadModelAndTokenizer(const std::string& model_path,
                                                  const std::string& tokenizer_path,
                                                  bool dummy_weights, bool dummy_on_device,
                                                  int32_t max_model_len,
                                                  const std::string& chat_template) {
  HKV_ASSIGN_OR_RETURN(LoadedModel out,
                       LoadModelAndTokenizerImpl(model_path, tokenizer_path, dummy_weights,
                                                 dummy_on_device, chat_template));
  if (IsDirectory(model_path)) {
    HKV_ASSIGN_OR_RETURN(out.sampling_defaults, LoadSamplingDefaults(model_path));
  }
  if (max_model_len > 0) {
    // The model is not shared yet: adjusting its context length in place is safe.
    std::const_pointer_cast<Model>(out.model)->config.max_seq_len = max_model_len;
  }
  return out;
}

std::string ResolveDevice(const std::string& device, const ModelConfig& model) {
  if (device != "auto") return device;
#ifdef HKV_WITH_CUDA
  if (CudaDeviceAvailable() && CudaWorker::Supports(model).ok()) return "cuda";
#endif
  return "cpu";
}

namespace {

absl::StatusOr<LoadedModel> LoadModelAndTokenizerImpl(const std::string& model_path,
                                                      const std::string& tokenizer_path,
                                                      bool dummy_weights, bool dummy_on_device,
                                                      const std::string& chat_template) {
  LoadedModel out;
  if (dummy_weights && dummy_on_device) {
    HKV_ASSIGN_OR_RETURN(ModelConfig config, LoadHfConfig(model_path));
    HKV_RETURN_IF_ERROR(ValidateModelConfig(config));
    auto model = std::make_shared<Model>();
    model->config = std::move(config);
    model->device_dummy_seed = 0;
    out.model = std::move(model);
    HKV_RETURN_IF_ERROR(LoadDummyTokenizer(model_path, tokenizer_path, chat_template, &out));
    return out;
  }
  if (dummy_weights) {
    HKV_ASSIGN_OR_RETURN(ModelConfig config, LoadHfConfig(model_path));
    // Weights are built in host memory as fp32 first: refuse rather than be OOM-killed.
    const double params = static_cast<double>(config.num_layers) *
                              (2.0 * config.dim * (config.q_size() + config.kv_size()) +
                               3.0 * config.dim * config.hidden_dim) +
                          (config.tie_embeddings ? 1.0 : 2.0) * config.vocab_size * config.dim;
    const double available = static_cast<double>(sysconf(_SC_AVPHYS_PAGES)) * sysconf(_SC_PAGESIZE);
    if (params * 4 > 0.9 * available) {
      return absl::ResourceExhaustedError(absl::StrFormat(
          "random weights for %s need %.1f GiB of host memory (fp32) but %.1f GiB is free",
          config.name, params * 4 / 1073741824.0, available / 1073741824.0));
    }
    HKV_ASSIGN_OR_RETURN(Model model, MakeDummyModel(config, /*seed=*/0));
    out.model = std::make_shared<Model>(std::move(model));
    HKV_RETURN_IF_ERROR(LoadDummyTokenizer(model_path, tokenizer_path, chat_template, &out));
    return out;
  }
  if (IsDirectory(model_path)) {
    HKV_ASSIGN_OR_RETURN(Model model, LoadHfModel(model_path));
    out.model = std::make_shared<Model>(std::move(model));
    const std::string dir = tokenizer_path.empty() ? model_path : tokenizer_path;
    auto tok = LoadHfTokenizer(dir);
    if (tok.ok()) {
      out.tokenizer = std::move(*tok);
      HKV_RETURN_IF_ERROR(LoadChat(dir, chat_template, &out));
    } else if (tok.status().code() != absl::StatusCode::kNotFound) {
      return tok.status();
    }
    return out;
  }
  HKV_ASSIGN_OR_RETURN(Model model, LoadLlama2cCheckpoint(model_path));
  auto shared = std::make_shared<Model>(std::move(model));
  const std::string path =
      tokenizer_path.empty() ? Dirname(model_path) + "/tok512.bin" : tokenizer_path;
  HKV_ASSIGN_OR_RETURN(std::unique_ptr<Tokenizer> tok,
                       LoadLlama2cTokenizer(path, shared->config.vocab_size));
  out.tokenizer = std::move(tok);
  out.model = std::move(shared);
  // A llama2.c checkpoint has no chat template of its own; --chat-template gives it one.
  if (!chat_template.empty()) {
    HKV_RETURN_IF_ERROR(LoadChat(Dirname(model_path), chat_template, &out));
  }
  return out;
}

}  // namespace

absl::StatusOr<KvPoolSizing> SizeKvPool(const ServerConfig& config, const ModelConfig& m,
                                        int32_t kv_dtype_bytes) {
  KvPoolSizing s;
  s.bytes_per_token_row = 2LL * m.head_dim * kv_dtype_bytes;
  s.bytes_per_block = s.bytes_per_token_row * config.block_size;
  if (config.kv_pool_blocks > 0) {
    s.num_blocks = config.kv_pool_blocks;
  } else {
    s.num_blocks = static_cast<int64_t>(config.kv_pool_gb * (1LL << 30)) / s.bytes_per_block;
  }
  if (s.num_blocks < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("the KV pool holds no block (", s.bytes_per_block,
                     " bytes each): raise --kv-pool-gb or --kv-pool-blocks"));
  }
  if (s.num_blocks > INT32_MAX) {
    return absl::InvalidArgumentError("the KV pool is larger than 2^31 blocks: lower it");
  }
  const int64_t rows = static_cast<int64_t>(m.num_layers) * m.num_kv_heads;
  const int64_t blocks_per_row_full = (m.max_seq_len + config.block_size - 1) / config.block_size;
  const int64_t blocks_per_row_budget =
      (config.default_kv_budget + config.block_size - 1) / config.block_size;
  s.summary = absl::StrFormat(
      "KV pool: %d head-blocks x %d B (block_size %d, head_dim %d, %d B/elem, K+V) = %.3f GiB\n"
      "  rows per sequence: %d layers x %d KV heads = %d\n"
      "  max sequences at full context (%d tokens): %d\n"
      "  max sequences at %d tokens per head (policy %s, prompt region): %d",
      s.num_blocks, s.bytes_per_block, config.block_size, m.head_dim, kv_dtype_bytes,
      static_cast<double>(s.num_blocks * s.bytes_per_block) / (1LL << 30), m.num_layers,
      m.num_kv_heads, rows, m.max_seq_len, s.num_blocks / (rows * blocks_per_row_full),
      config.default_kv_budget, config.default_kv_policy,
      s.num_blocks / (rows * blocks_per_row_budget));
  return s;
}

absl::StatusOr<std::unique_ptr<Worker>> MakeWorker(const ServerConfig& config,
                                                   std::shared_ptr<const Model> model) {
  if (config.device == "cpu") {
    if (model->device_dummy_seed.has_value()) {
      return absl::InvalidArgumentError("weights left to the GPU need --device cuda");
    }
    const int threads = config.num_threads > 0
                            ? config.num_threads
                            : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
    return std::unique_ptr<Worker>(std::make_unique<CpuWorker>(std::move(model), /*num_blocks=*/0,
                                                               config.block_size, threads));
  }
#ifdef HKV_WITH_CUDA
  CudaWorkerOptions options;
  options.block_size = config.block_size;
  options.num_blocks = config.kv_pool_blocks;
  options.gpu_memory_utilization = config.gpu_memory_utilization;
  // A compressed prefill runs the whole prompt in one step: plan activations for the longest.
  options.max_step_tokens = std::max(config.max_batch_tokens, model->config.max_seq_len);
  options.max_seqs = config.max_seqs;
  options.cuda_graph_max_batch = std::min(config.cuda_graph_max_batch, config.max_seqs);
  options.prefill_kernel = PrefillKernelOf(config);
  options.fused_decode = config.cuda_fused_decode;
  HKV_ASSIGN_OR_RETURN(std::unique_ptr<CudaWorker> worker,
                       CudaWorker::Create(std::move(model), options));
  std::cerr << worker->sizing() << "\n";
  return std::unique_ptr<Worker>(std::move(worker));
#else
  return absl::UnavailableError("--device cuda: this hkv was built without CUDA (HKV_CUDA=OFF)");
#endif
}

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
  o.base.block_size = config.block_size;
  o.base.num_blocks = config.kv_pool_blocks;
  o.base.gpu_memory_utilization = config.gpu_memory_utilization;
  o.base.max_step_tokens = std::max(config.max_batch_tokens, m.max_seq_len);
  o.base.max_seqs = config.max_seqs;
  o.base.cuda_graph_max_batch = std::min(config.cuda_graph_max_batch, config.max_seqs);
  o.base.prefill_kernel = PrefillKernelOf(config);
  o.base.fused_decode = config.cuda_fused_decode;
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
  HKV_ASSIGN_OR_RETURN(bundle.loaded,
                       LoadModelAndTokenizer(config.model, config.tokenizer, config.dummy_weights,
                                             config.device == "cuda", config.max_model_len,
                                             config.chat_template));
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
