#pragma once
// Loading what an engine needs: the model, its tokenizer and chat format, a worker, and the KV
// pool size. Called from main before any engine thread starts.

#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "executor/dist_bootstrap.h"
#include "model/model_config.h"
#include "server/engine.h"
#include "server/server_config.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"
#include "workers/cuda/cuda_worker_options.h"
#include "workers/worker.h"

namespace hkv {

struct LoadedModel {
  std::shared_ptr<const Model> model;
  std::shared_ptr<const Tokenizer> tokenizer;
  std::shared_ptr<const ChatTemplate> chat;  // Null when the model has no chat template.
  SamplingDefaults sampling_defaults;        // From generation_config.json, if any.
};

// Loads a llama2.c checkpoint (file) and its tokenizer (`tokenizer`, else tok512.bin beside
// it), or, with `dummy_weights`, builds random weights for the config.json at `model_path` (a
// Hugging Face model directory or the file itself); such a model has no tokenizer unless
// `tokenizer` names a llama2.c one.
// With `dummy_on_device` the random weights are left to the CUDA worker (Model::
// device_dummy_seed) instead of being built on the host. `max_model_len` > 0 replaces the
// model's context length (e.g. to serve 32k prompts with Llama-3-8B's config).
// `chat_template`, when not empty, is a Jinja file used instead of the model's own template
// (INVALID_ARGUMENT when it cannot be read or parsed).
absl::StatusOr<LoadedModel> LoadModelAndTokenizer(
    const std::string& model_path, const std::string& tokenizer_path, bool dummy_weights = false,
    bool dummy_on_device = false, int32_t max_model_len = 0, const std::string& chat_template = "");

// The options every CUDA worker of `config` starts from (one GPU, or each tensor-parallel
// rank's base): pool, step sizes, CUDA graphs and the kernel choices. Host only.
CudaWorkerOptions CudaWorkerOptionsFor(const ServerConfig& config, const ModelConfig& model);

// The device BuildEngine runs on: config.device, with "auto" meaning cuda when this build has
// CUDA, a GPU is present and its kernels serve the model's shapes (else cpu).
std::string ResolveDevice(const std::string& device, const ModelConfig& model);

// KV pool arithmetic for one device, printed at start.
struct KvPoolSizing {
  int64_t num_blocks = 0;
  int64_t bytes_per_block = 0;  // K and V of block_size tokens of one head.
  int64_t bytes_per_token_row = 0;
  std::string summary;  // Human-readable lines: blocks, bytes, max sequences full / budgeted.
};
absl::StatusOr<KvPoolSizing> SizeKvPool(const ServerConfig& config, const ModelConfig& model,
                                        int32_t kv_dtype_bytes);

// Builds the worker for config.device: the CPU reference (its KV pool empty until
// Worker::AllocateKvPool), or the CUDA worker (which plans its pool from free GPU memory unless
// kv_pool_blocks is set, and reports it through Worker::ReportKvCapacity).
absl::StatusOr<std::unique_ptr<Worker>> MakeWorker(const ServerConfig& config,
                                                   std::shared_ptr<const Model> model);

// Everything: model, worker, engine options from a ServerConfig. The engine is not started.
struct EngineBundle {
  LoadedModel loaded;
  KvPoolSizing sizing;
  std::unique_ptr<Engine> engine;
};
// A multi-node `layout` (world_size > 1) makes this node 0 of the group: it waits for the other
// nodes (executor/multi_node_group.h) and its engine schedules for all of them.
absl::StatusOr<EngineBundle> BuildEngine(const ServerConfig& config,
                                         const DistLayout& layout = DistLayout());

// Nodes 1..N-1 of a multi-node group: loads the model, joins node 0 and runs the steps it sends
// until it stops the group (OK) or the group breaks (the error). Blocks.
// `on_broken` as for FollowMultiNodeGroup (executor/multi_node_group.h).
absl::Status RunFollowerNode(const ServerConfig& config, const DistLayout& layout,
                             const std::function<void(const absl::Status&)>& on_broken = {});

}  // namespace hkv
