#include "server/server_config.h"

#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <string>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace hkv {
namespace {

// A file in the test's temporary directory, removed when the test ends.
class TempFile {
 public:
  TempFile(const std::string& name, const std::string& text)
      : path_(std::string(::testing::TempDir()) + "/" + std::to_string(getpid()) + "_" + name) {
    std::ofstream(path_) << text;
  }
  ~TempFile() { std::remove(path_.c_str()); }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

TEST(ServerConfigTest, YamlFileOverlaysOnlyItsKeys) {
  TempFile file("a.yaml",
                "port: 1234\nmax_seqs: 3\nkv_pool_gb: 0.5\ndummy_weights: true\n"
                "device: cpu\nkv_pool_blocks: 5000000000\n");
  ServerConfig c;
  ASSERT_TRUE(LoadServerConfigFile(file.path(), &c).ok());
  EXPECT_EQ(c.port, 1234);
  EXPECT_EQ(c.max_seqs, 3);
  EXPECT_DOUBLE_EQ(c.kv_pool_gb, 0.5);
  EXPECT_TRUE(c.dummy_weights);
  EXPECT_EQ(c.device, "cpu");
  EXPECT_EQ(c.kv_pool_blocks, 5000000000);  // 64-bit.
  // Keys the file does not name keep their defaults.
  const ServerConfig defaults;
  EXPECT_EQ(c.metrics_port, defaults.metrics_port);
  EXPECT_EQ(c.host, "0.0.0.0");
  EXPECT_EQ(c.max_concurrent_streams, kDefaultMaxConcurrentStreams);
  EXPECT_TRUE(ValidateServerConfig(c).ok());
}

TEST(ServerConfigTest, JsonFileIsReadAsYaml) {
  TempFile file("a.json", R"({"metrics_host": "0.0.0.0", "max_queue": 7, "head_scores": "s"})");
  ServerConfig c;
  ASSERT_TRUE(LoadServerConfigFile(file.path(), &c).ok());
  EXPECT_EQ(c.metrics_host, "0.0.0.0");
  EXPECT_EQ(c.max_queue, 7);
  EXPECT_EQ(c.head_scores, "s");
}

TEST(ServerConfigTest, EmptyFileChangesNothing) {
  TempFile file("empty.yaml", "");
  ServerConfig c;
  ASSERT_TRUE(LoadServerConfigFile(file.path(), &c).ok());
  EXPECT_EQ(ServerConfigToJson(c), ServerConfigToJson(ServerConfig()));
}

TEST(ServerConfigTest, UnknownKeyIsNamed) {
  TempFile file("unknown.yaml", "port: 1\nmax_sequences: 3\n");
  ServerConfig c;
  absl::Status s = LoadServerConfigFile(file.path(), &c);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("unknown key 'max_sequences'"), absl::string_view::npos) << s;
}

TEST(ServerConfigTest, BadTypesAreNamed) {
  for (const char* text : {"port: many\n", "dummy_weights: 3\n", "kv_pool_gb: [1]\n",
                           "max_seqs: 1.5\n", "model: {a: 1}\n"}) {
    TempFile file("bad.yaml", text);
    ServerConfig c;
    absl::Status s = LoadServerConfigFile(file.path(), &c);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << text;
    EXPECT_NE(s.message().find("has a bad value"), absl::string_view::npos) << s;
  }
}

TEST(ServerConfigTest, MissingAndMalformedFiles) {
  ServerConfig c;
  EXPECT_EQ(LoadServerConfigFile("/nonexistent/hkv.yaml", &c).code(), absl::StatusCode::kNotFound);
  TempFile list("list.yaml", "- port\n- 1\n");
  EXPECT_EQ(LoadServerConfigFile(list.path(), &c).code(), absl::StatusCode::kInvalidArgument);
  TempFile broken("broken.yaml", "port: [1\n");
  EXPECT_EQ(LoadServerConfigFile(broken.path(), &c).code(), absl::StatusCode::kInvalidArgument);
}

TEST(ServerConfigTest, PrintListsEveryOptionInOrderThenHealth) {
  const nlohmann::ordered_json j = nlohmann::ordered_json::parse(ServerConfigToJson({}));
  std::vector<std::string> keys;
  for (const auto& item : j.items()) keys.push_back(item.key());
  // The first keys, in the order --print-config has always printed them, and the last ones.
  ASSERT_GE(keys.size(), 8u);
  EXPECT_EQ(keys[0], "model");
  EXPECT_EQ(keys[1], "tokenizer");
  EXPECT_EQ(keys[2], "dummy_weights");
  EXPECT_EQ(keys[3], "host");
  EXPECT_EQ(keys[4], "port");
  EXPECT_EQ(keys.back(), "health");
  EXPECT_EQ(j["health"]["readiness_service"], kReadinessService);
  EXPECT_EQ(j["port"], 50051);
  EXPECT_EQ(j["kv_pool_gb"], 0.25);
  EXPECT_EQ(j["default_kv_policy"], "full");
}

TEST(ServerConfigTest, PrintRoundTrips) {
  ServerConfig c;
  c.model = "/models/x";
  c.dummy_weights = true;
  c.port = 7;
  c.kv_pool_blocks = int64_t{1} << 40;
  c.kv_pool_gb = 1.75;
  c.tp_head_placement = "contiguous";
  c.max_stop_token_ids = 3;
  nlohmann::ordered_json j = nlohmann::ordered_json::parse(ServerConfigToJson(c));
  j.erase("health");  // Not an option.
  TempFile file("printed.json", j.dump());
  ServerConfig back;
  ASSERT_TRUE(LoadServerConfigFile(file.path(), &back).ok());
  EXPECT_EQ(ServerConfigToJson(back), ServerConfigToJson(c));
  EXPECT_EQ(back.kv_pool_blocks, int64_t{1} << 40);
  EXPECT_EQ(back.tp_head_placement, "contiguous");
}

TEST(ServerConfigTest, ValidationNamesTheBadValue) {
  ServerConfig c;
  c.port = 70000;
  EXPECT_EQ(ValidateServerConfig(c).code(), absl::StatusCode::kInvalidArgument);
  c = ServerConfig();
  c.engine_stall_timeout_s = 60;
  c.engine_liveness_timeout_s = 30;
  absl::Status s = ValidateServerConfig(c);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("engine_liveness_timeout_s"), absl::string_view::npos) << s;
  EXPECT_TRUE(ValidateServerConfig(ServerConfig()).ok());
}

// Runs the hkv binary with `args`; returns its stdout and sets `*status` to its exit status.
std::string RunHkv(const std::string& args, int* status) {
  FILE* pipe = popen((std::string(HKV_BINARY) + " " + args + " 2>/dev/null").c_str(), "r");
  std::string out;
  char buffer[4096];
  size_t n;
  while ((n = fread(buffer, 1, sizeof(buffer), pipe)) > 0) out.append(buffer, n);
  const int raw = pclose(pipe);
  *status = WIFEXITED(raw) ? WEXITSTATUS(raw) : -1;
  return out;
}

TEST(ServerConfigTest, CommandLineOverridesTheFileOptionByOption) {
  TempFile file("override.yaml",
                "port: 1234\nmax_seqs: 3\ndummy_weights: true\nkv_pool_blocks: 99\n"
                "tokenizer: /t\n");
  int status = 0;
  const std::string out = RunHkv("serve --print-config --config " + file.path() +
                                     " --max-seqs 7 --nodummy_weights --kv-pool-gb=0.5"
                                     " --model=/m",
                                 &status);
  ASSERT_EQ(status, 0) << out;
  const nlohmann::json j = nlohmann::json::parse(out);
  EXPECT_EQ(j["max_seqs"], 7);           // Both: the command line wins.
  EXPECT_EQ(j["dummy_weights"], false);  // Both, negated on the command line.
  EXPECT_EQ(j["port"], 1234);            // File only.
  EXPECT_EQ(j["kv_pool_blocks"], 99);    // File only.
  EXPECT_EQ(j["kv_pool_gb"], 0.5);       // Command line only.
  EXPECT_EQ(j["model"], "/m");           // Command line only.
  EXPECT_EQ(j["tokenizer"], "/t");       // File only.
  EXPECT_EQ(j["max_queue"], 1024);       // Neither: the default.
}

TEST(ServerConfigTest, RepeatedApiKeysAreJoinedAndNeverPrinted) {
  int status = 0;
  const std::string out = RunHkv(
      "serve --print-config --api-key=first-key-00001 --api-key second-key-00002 "
      "--api_key=third-key-000003 --log-format=json --health-port=8081",
      &status);
  ASSERT_EQ(status, 0) << out;
  const nlohmann::json j = nlohmann::json::parse(out);
  EXPECT_EQ(j["api_key"], "<3 redacted>");
  EXPECT_EQ(out.find("first-key"), std::string::npos) << "a key was printed";
  EXPECT_EQ(j["log_format"], "json");
  EXPECT_EQ(j["health_port"], 8081);
}

TEST(ServerConfigTest, SecurityOptionsAreValidated) {
  ServerConfig c;
  c.tls_cert = "/c.pem";
  EXPECT_EQ(ValidateServerConfig(c).code(), absl::StatusCode::kInvalidArgument);  // no key
  c.tls_key = "/k.pem";
  EXPECT_TRUE(ValidateServerConfig(c).ok());
  c = ServerConfig();
  c.tls_client_ca = "/ca.pem";
  EXPECT_EQ(ValidateServerConfig(c).code(), absl::StatusCode::kInvalidArgument);
  c = ServerConfig();
  c.health_port = c.port;
  EXPECT_EQ(ValidateServerConfig(c).code(), absl::StatusCode::kInvalidArgument);
  c = ServerConfig();
  c.log_format = "xml";
  EXPECT_EQ(ValidateServerConfig(c).code(), absl::StatusCode::kInvalidArgument);
  c = ServerConfig();
  c.max_requests_per_key = -1;
  EXPECT_EQ(ValidateServerConfig(c).code(), absl::StatusCode::kInvalidArgument);
  c = ServerConfig();
  c.max_requests_per_key = 4;  // per key, without keys
  EXPECT_EQ(ValidateServerConfig(c).code(), absl::StatusCode::kInvalidArgument);
  c.api_key_file = "/keys.txt";
  EXPECT_TRUE(ValidateServerConfig(c).ok());
}

TEST(ServerConfigTest, PrefillKernelIsOneOfTheKernels) {
  ServerConfig c;
  for (const char* kernel : {"auto", "mma", "wgmma"}) {
    c.cuda_prefill_kernel = kernel;
    EXPECT_TRUE(ValidateServerConfig(c).ok()) << kernel;
  }
  c.cuda_prefill_kernel = "fa3";
  const absl::Status s = ValidateServerConfig(c);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("cuda_prefill_kernel must be 'auto', 'mma' or 'wgmma', got 'fa3'"),
            absl::string_view::npos)
      << s;
  EXPECT_EQ(ServerConfig().cuda_prefill_kernel, "auto");
  EXPECT_FALSE(ServerConfig().cuda_fused_decode);
}

TEST(ServerConfigTest, EveryOptionIsAServeFlag) {
  int status = 0;
  const std::string help = RunHkv("serve --help", &status);
  ASSERT_EQ(status, 0);
  const nlohmann::ordered_json j = nlohmann::ordered_json::parse(ServerConfigToJson({}));
  for (const auto& item : j.items()) {
    if (item.key() == "health") continue;
    std::string flag = "--" + item.key();
    for (char& ch : flag) ch = ch == '_' ? '-' : ch;
    EXPECT_NE(help.find("  " + flag), std::string::npos) << flag << " is not in serve --help";
  }
}

}  // namespace
}  // namespace hkv
