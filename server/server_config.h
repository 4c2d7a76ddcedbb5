#pragma once
// ServerConfig: everything `hkv serve` is configured by, from a YAML/JSON file and flags. Its
// fields, file keys and flags all come from the one option list in server_options.h.
// Plain data; built once in main before any thread starts.

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "server/server_options.h"

namespace hkv {

// gRPC health service names the probes use (see deploy/k8s).
inline constexpr char kLivenessService[] = "";
inline constexpr char kReadinessService[] = "hkv.v1.Generation";

// One field per option of server_options.h, in its order, with its default.
struct ServerConfig {
#define HKV_SERVER_CONFIG_FIELD(type, name, default_value, help) type name = default_value;
  HKV_SERVER_OPTIONS(HKV_SERVER_CONFIG_FIELD)
#undef HKV_SERVER_CONFIG_FIELD
};

// Overlays the keys of a YAML (or JSON) file onto `config`: a key is an option's name. An empty
// file changes nothing. INVALID_ARGUMENT names an unknown key or a value of the wrong type (the
// first found; `config` may hold the keys before it); NOT_FOUND a missing file.
absl::Status LoadServerConfigFile(const std::string& path, ServerConfig* config);

// INVALID_ARGUMENT when a value is out of range (port, block_size, ...).
absl::Status ValidateServerConfig(const ServerConfig& config);

// Returns one JSON object with every option (file key names, in server_options.h's order), plus
// the health service names under "health" (not an option): the options, read back with
// LoadServerConfigFile, give `config` again, except api_key, which is printed redacted
// ("<N redacted>": keys are secrets).
std::string ServerConfigToJson(const ServerConfig& config);

}  // namespace hkv
