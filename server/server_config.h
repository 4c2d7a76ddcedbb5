#pragma once
// ServerConfig: everything `hkv serve` is configured by, from a YAML/JSON file and flags.
// Plain data; built once in main before any thread starts.

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"

namespace hkv {

// gRPC health service names the probes use (see deploy/k8s).
inline constexpr char kLivenessService[] = "";
inline constexpr char kReadinessService[] = "hkv.v1.Generation";
// Generate/Complete calls in flight at once; each holds a gRPC handler thread.
inline constexpr int32_t kDefaultMaxConcurrentStreams = 2048;

struct ServerConfig {
  std::string model;           // llama2.c .bin file or Hugging Face model directory.
  std::string tokenizer;       // Optional; defaults beside the model.
  bool dummy_weights = false;  // Random weights for `model`'s config.json (benchmarks).
  std::string host = "0.0.0.0";
  int32_t port = 50051;         // gRPC.
  int32_t metrics_port = 9090;  // HTTP /metrics; 0 disables it.
  // Address of /metrics and /healthz: loopback unless set (Kubernetes: 0.0.0.0, for scrapes).
  std::string metrics_host = "127.0.0.1";
  int32_t max_concurrent_streams = kDefaultMaxConcurrentStreams;
  std::string device = "auto";  // cpu | cuda | auto (cuda when a GPU is present).
  int32_t tensor_parallel_size = 1;
  std::string tp_head_placement = "balanced";  // balanced (by the HeadKV plan) | contiguous
  int64_t kv_pool_blocks = 0;  // 0: derive from kv_pool_gb (CPU) or free memory (GPU).
  double kv_pool_gb = 0.25;
  double gpu_memory_utilization = 0.9;
  int32_t block_size = 16;
  int32_t max_batch_tokens = 8192;
  int32_t max_seqs = 256;
  int32_t max_model_len = 0;           // Longest prompt + output; 0: the model's context length.
  int64_t max_prompt_bytes = 0;        // Longest text prompt (bytes); 0: context x longest token.
  int32_t cuda_graph_max_batch = 256;  // Largest decode batch run as a CUDA graph; 0: eager.
  int32_t max_queue = 1024;
  std::string default_kv_policy = "full";
  int32_t default_kv_budget = 128;
  std::string head_scores;  // Score file for the headkv policy.
  int32_t drain_timeout_s = 30;
  int32_t num_threads = 0;              // CPU worker threads; 0 = all cores.
  // One engine loop iteration longer than this turns readiness NOT_SERVING; longer than the
  // liveness timeout (or a dead loop) turns liveness NOT_SERVING, so the pod is restarted.
  int32_t engine_stall_timeout_s = 30;
  int32_t engine_liveness_timeout_s = 300;
  int32_t dist_join_timeout_s = 600;    // Multi-node: how long the nodes may take to form a group.
  int32_t max_stop_strings = 64;        // Stop strings per request.
  int32_t max_stop_bytes = 4096;        // Bytes of a request's stop strings, all together.
  int32_t max_stop_token_ids = 256;     // Stop token ids per request.
};

// Overlays the keys of a YAML (or JSON) file onto `config`. INVALID_ARGUMENT names an unknown
// key or a value of the wrong type; NOT_FOUND a missing file.
absl::Status LoadServerConfigFile(const std::string& path, ServerConfig* config);

// INVALID_ARGUMENT when a value is out of range (port, block_size, ...).
absl::Status ValidateServerConfig(const ServerConfig& config);

// One JSON object with every key (file key names), plus the health service names.
std::string ServerConfigToJson(const ServerConfig& config);

}  // namespace hkv
