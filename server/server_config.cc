#include "server/server_config.h"

#include <algorithm>
#include <fstream>
#include <type_traits>
#include <variant>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "nlohmann/json.hpp"
#include "yaml-cpp/yaml.h"

namespace hkv {
namespace {

// One option as the file reader and the JSON printer see it: its key and its field.
struct OptionField {
  const char* name;
  std::variant<bool ServerConfig::*, int32_t ServerConfig::*, int64_t ServerConfig::*,
               double ServerConfig::*, std::string ServerConfig::*>
      member;
};

// Every option, in server_options.h's order (the order --print-config prints).
absl::Span<const OptionField> OptionFields() {
#define HKV_OPTION_FIELD(type, name, default_value, help) {#name, &ServerConfig::name},
  static constexpr OptionField kFields[] = {HKV_SERVER_OPTIONS(HKV_OPTION_FIELD)};
#undef HKV_OPTION_FIELD
  return kFields;
}

const OptionField* FindOption(absl::string_view name) {
  for (const OptionField& field : OptionFields()) {
    if (name == field.name) return &field;
  }
  return nullptr;
}

// Sets one field from a YAML node; INVALID_ARGUMENT when the node is not of the field's type.
absl::Status SetField(const OptionField& field, const YAML::Node& node, ServerConfig* config) {
  return std::visit(
      [&](auto member) -> absl::Status {
        using T = std::remove_reference_t<decltype(config->*member)>;
        try {
          config->*member = node.as<T>();
        } catch (const YAML::Exception& e) {
          return absl::InvalidArgumentError(e.what());
        }
        return absl::OkStatus();
      },
      field.member);
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
    const OptionField* field = FindOption(key);
    if (field == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat("config file '", path, "': unknown key '", key, "'"));
    }
    absl::Status status = SetField(*field, item.second, config);
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
  if (c.cuda_prefill_kernel != "auto" && c.cuda_prefill_kernel != "mma" &&
      c.cuda_prefill_kernel != "wgmma") {
    return bad("cuda_prefill_kernel must be 'auto', 'mma' or 'wgmma', got '",
               c.cuda_prefill_kernel, "'");
  }
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
  if (c.max_step_ms < 0) return bad("max_step_ms must be >= 0");
  if (!(c.max_prefill_share >= 0 && c.max_prefill_share < 1)) {
    return bad("max_prefill_share must be in [0, 1)");
  }
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
  if (c.http_port < 0 || c.http_port > 65535) {
    return bad("http_port must be in [0, 65535], got ", c.http_port);
  }
  if (c.http_max_body_bytes < 1024) return bad("http_max_body_bytes must be >= 1024");
  if (c.http_max_connections < 1 || c.http_max_connections > 1000000) {
    return bad("http_max_connections must be in [1, 1000000]");
  }
  if (c.tls_cert.empty() != c.tls_key.empty()) return bad("set both tls_cert and tls_key");
  if (!c.tls_client_ca.empty() && c.tls_cert.empty()) {
    return bad("tls_client_ca needs tls_cert and tls_key");
  }
  if (c.tls_reload_interval_s < 1) return bad("tls_reload_interval_s must be >= 1");
  if (c.max_requests_per_key < 0) return bad("max_requests_per_key must be >= 0");
  if (c.max_requests_per_key > 0 && c.api_key.empty() && c.api_key_file.empty()) {
    return bad("max_requests_per_key needs API keys (api_key or api_key_file): the limit is per "
               "key; use max_queue for a server-wide one");
  }
  if (c.health_port < 0 || c.health_port > 65535) {
    return bad("health_port must be in [0, 65535] (0: none), got ", c.health_port);
  }
  if (c.health_port != 0 && c.health_port == c.port)
    return bad("health_port must differ from port");
  if (c.log_level != "info" && c.log_level != "warning" && c.log_level != "error") {
    return bad("log_level must be info, warning or error, got '", c.log_level, "'");
  }
  if (c.log_format != "text" && c.log_format != "json") {
    return bad("log_format must be text or json, got '", c.log_format, "'");
  }
  if (c.stats_interval_s < 0) return bad("stats_interval_s must be >= 0 (0: none)");
  if (c.max_n < 1) return bad("max_n must be >= 1");
  return absl::OkStatus();
}

std::string ServerConfigToJson(const ServerConfig& c) {
  nlohmann::ordered_json j;
  for (const OptionField& field : OptionFields()) {
    std::visit([&](auto member) { j[field.name] = c.*member; }, field.member);
  }
  // Secrets are not printed (the key file's path is), only how many keys there are.
  if (!c.api_key.empty()) {
    const size_t keys = std::count(c.api_key.begin(), c.api_key.end(), ',') + 1;
    j["api_key"] = absl::StrCat("<", keys, " redacted>");
  }
  j["health"] = {{"liveness_service", kLivenessService}, {"readiness_service", kReadinessService}};
  return j.dump(2);
}

}  // namespace hkv
