#include "server/server_config.h"

#include <fstream>
#include <functional>
#include <map>

#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"
#include "yaml-cpp/yaml.h"

namespace hkv {
namespace {

using Setter = std::function<absl::Status(const YAML::Node&, ServerConfig*)>;

template <typename T>
Setter Field(T ServerConfig::*member) {
  return [member](const YAML::Node& node, ServerConfig* config) -> absl::Status {
    try {
      config->*member = node.as<T>();
    } catch (const YAML::Exception& e) {
      return absl::InvalidArgumentError(e.what());
    }
    return absl::OkStatus();
  };
}

const std::map<std::string, Setter>& Fields() {
  static const auto* fields = new std::map<std::string, Setter>{
      {"model", Field(&ServerConfig::model)},
      {"tokenizer", Field(&ServerConfig::tokenizer)},
      {"dummy_weights", Field(&ServerConfig::dummy_weights)},
      {"host", Field(&ServerConfig::host)},
      {"port", Field(&ServerConfig::port)},
      {"metrics_port", Field(&ServerConfig::metrics_port)},
      {"metrics_host", Field(&ServerConfig::metrics_host)},
      {"max_concurrent_streams", Field(&ServerConfig::max_concurrent_streams)},
      {"device", Field(&ServerConfig::device)},
      {"max_model_len", Field(&ServerConfig::max_model_len)},
      {"max_prompt_bytes", Field(&ServerConfig::max_prompt_bytes)},
      {"cuda_graph_max_batch", Field(&ServerConfig::cuda_graph_max_batch)},
      {"tensor_parallel_size", Field(&ServerConfig::tensor_parallel_size)},
      {"tp_head_placement", Field(&ServerConfig::tp_head_placement)},
      {"kv_pool_blocks", Field(&ServerConfig::kv_pool_blocks)},
      {"kv_pool_gb", Field(&ServerConfig::kv_pool_gb)},
      {"gpu_memory_utilization", Field(&ServerConfig::gpu_memory_utilization)},
      {"block_size", Field(&ServerConfig::block_size)},
      {"max_batch_tokens", Field(&ServerConfig::max_batch_tokens)},
      {"max_seqs", Field(&ServerConfig::max_seqs)},
      {"max_queue", Field(&ServerConfig::max_queue)},
      {"default_kv_policy", Field(&ServerConfig::default_kv_policy)},
      {"default_kv_budget", Field(&ServerConfig::default_kv_budget)},
      {"head_scores", Field(&ServerConfig::head_scores)},
      {"drain_timeout_s", Field(&ServerConfig::drain_timeout_s)},
      {"num_threads", Field(&ServerConfig::num_threads)},
      {"engine_stall_timeout_s", Field(&ServerConfig::engine_stall_timeout_s)},
      {"engine_liveness_timeout_s", Field(&ServerConfig::engine_liveness_timeout_s)},
      {"dist_join_timeout_s", Field(&ServerConfig::dist_join_timeout_s)},
      {"max_stop_strings", Field(&ServerConfig::max_stop_strings)},
      {"max_stop_bytes", Field(&ServerConfig::max_stop_bytes)},
      {"max_stop_token_ids", Field(&ServerConfig::max_stop_token_ids)},
  };
  return *fields;
}

}  // namespace

absl::Status LoadServerConfigFile(const std::string& path, ServerConfig* config) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read config file '", path, "'"));
  YAML::Node root;
  try {
    root = YAML::Load(in);
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("config file '", path, "': ", e.what()));
  }
  if (root.IsNull()) return absl::OkStatus();
  if (!root.IsMap()) {
    return absl::InvalidArgumentError(
        absl::StrCat("config file '", path, "' must hold a mapping of option: value"));
  }
  for (const auto& item : root) {
    const std::string key = item.first.as<std::string>();
    auto it = Fields().find(key);
    if (it == Fields().end()) {
      return absl::InvalidArgumentError(
          absl::StrCat("config file '", path, "': unknown key '", key, "'"));
    }
    absl::Status status = it->second(item.second, config);
    if (!status.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("config file '", path, "': key '", key,
                                                     "' has a bad value: ", status.message()));
    }
  }
  return absl::OkStatus();
}

absl::Status ValidateServerConfig(const ServerConfig& c) {
  auto bad = [](auto&&... parts) { return absl::InvalidArgumentError(absl::StrCat(parts...)); };
  if (c.port < 0 || c.port > 65535) return bad("port must be in [0, 65535], got ", c.port);
  if (c.metrics_port < 0 || c.metrics_port > 65535) {
    return bad("metrics_port must be in [0, 65535], got ", c.metrics_port);
  }
  if (c.metrics_host.empty()) return bad("metrics_host is empty (127.0.0.1: loopback only)");
  if (c.max_concurrent_streams < 1 || c.max_concurrent_streams > 65536) {
    return bad("max_concurrent_streams must be in [1, 65536], got ", c.max_concurrent_streams);
  }
  if (c.device != "cpu" && c.device != "cuda" && c.device != "auto") {
    return bad("device must be 'cpu', 'cuda' or 'auto', got '", c.device, "'");
  }
  if (c.max_model_len < 0) return bad("max_model_len must be >= 0 (0: the model's)");
  if (c.max_prompt_bytes < 0) return bad("max_prompt_bytes must be >= 0 (0: from the context)");
  if (c.cuda_graph_max_batch < 0) return bad("cuda_graph_max_batch must be >= 0");
  if (c.tensor_parallel_size < 1) return bad("tensor_parallel_size must be >= 1");
  if (c.tp_head_placement != "balanced" && c.tp_head_placement != "contiguous") {
    return bad("tp_head_placement must be 'balanced' or 'contiguous', got '", c.tp_head_placement,
               "'");
  }
  if (c.block_size < 1 || c.block_size > 1024) return bad("block_size must be in [1, 1024]");
  if (c.kv_pool_blocks < 0) return bad("kv_pool_blocks must be >= 0");
  if (c.kv_pool_blocks == 0 && c.kv_pool_gb <= 0 && c.device == "cpu") {
    return bad("set kv_pool_blocks or kv_pool_gb > 0");
  }
  if (c.gpu_memory_utilization <= 0 || c.gpu_memory_utilization > 1) {
    return bad("gpu_memory_utilization must be in (0, 1]");
  }
  if (c.max_batch_tokens < 1) return bad("max_batch_tokens must be >= 1");
  if (c.max_seqs < 1) return bad("max_seqs must be >= 1");
  if (c.max_queue < 1) return bad("max_queue must be >= 1");
  if (c.default_kv_budget < 1) return bad("default_kv_budget must be >= 1");
  if (c.drain_timeout_s < 0) return bad("drain_timeout_s must be >= 0");
  if (c.engine_stall_timeout_s < 1) return bad("engine_stall_timeout_s must be >= 1");
  if (c.engine_liveness_timeout_s < c.engine_stall_timeout_s) {
    return bad("engine_liveness_timeout_s (", c.engine_liveness_timeout_s,
               ") must be >= engine_stall_timeout_s (", c.engine_stall_timeout_s, ")");
  }
  if (c.dist_join_timeout_s < 1) return bad("dist_join_timeout_s must be >= 1");
  if (c.max_stop_strings < 0) return bad("max_stop_strings must be >= 0");
  if (c.max_stop_bytes < 0) return bad("max_stop_bytes must be >= 0");
  if (c.max_stop_token_ids < 0) return bad("max_stop_token_ids must be >= 0");
  return absl::OkStatus();
}

std::string ServerConfigToJson(const ServerConfig& c) {
  nlohmann::ordered_json j;
  j["model"] = c.model;
  j["tokenizer"] = c.tokenizer;
  j["dummy_weights"] = c.dummy_weights;
  j["host"] = c.host;
  j["port"] = c.port;
  j["metrics_port"] = c.metrics_port;
  j["metrics_host"] = c.metrics_host;
  j["max_concurrent_streams"] = c.max_concurrent_streams;
  j["device"] = c.device;
  j["tensor_parallel_size"] = c.tensor_parallel_size;
  j["tp_head_placement"] = c.tp_head_placement;
  j["kv_pool_blocks"] = c.kv_pool_blocks;
  j["kv_pool_gb"] = c.kv_pool_gb;
  j["gpu_memory_utilization"] = c.gpu_memory_utilization;
  j["block_size"] = c.block_size;
  j["max_batch_tokens"] = c.max_batch_tokens;
  j["max_seqs"] = c.max_seqs;
  j["max_model_len"] = c.max_model_len;
  j["max_prompt_bytes"] = c.max_prompt_bytes;
  j["cuda_graph_max_batch"] = c.cuda_graph_max_batch;
  j["max_queue"] = c.max_queue;
  j["default_kv_policy"] = c.default_kv_policy;
  j["default_kv_budget"] = c.default_kv_budget;
  j["head_scores"] = c.head_scores;
  j["drain_timeout_s"] = c.drain_timeout_s;
  j["num_threads"] = c.num_threads;
  j["engine_stall_timeout_s"] = c.engine_stall_timeout_s;
  j["engine_liveness_timeout_s"] = c.engine_liveness_timeout_s;
  j["dist_join_timeout_s"] = c.dist_join_timeout_s;
  j["max_stop_strings"] = c.max_stop_strings;
  j["max_stop_bytes"] = c.max_stop_bytes;
  j["max_stop_token_ids"] = c.max_stop_token_ids;
  j["health"] = {{"liveness_service", kLivenessService}, {"readiness_service", kReadinessService}};
  return j.dump(2);
}

}  // namespace hkv
