// `hkv serve --http-port` as a process: `hkv bench-serve --backend openai` against it writes
// vllm bench serve's result keys; SIGTERM drains an HTTP stream in flight and exits 0.

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <string>
#include <thread>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/http_test_client.h"
#include "tests/server_test_util.h"

namespace hkv::testing {
namespace {

int FreePort() {
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
  auto server = builder.BuildAndStart();
  server->Shutdown();
  return port;
}

pid_t StartServer(int port, int http_port) {
  pid_t pid = fork();
  if (pid == 0) {
    const std::string port_flag = "--port=" + std::to_string(port);
    const std::string http_flag = "--http-port=" + std::to_string(http_port);
    execl(HKV_BINARY, HKV_BINARY, "serve", "--host=127.0.0.1", port_flag.c_str(), http_flag.c_str(),
          "--metrics-port=0", "--kv-pool-blocks=4096", "--num-threads=1",
          "--served-model-name=tiny-stories, stories", "--drain-timeout-s=20",
          static_cast<char*>(nullptr));
    _exit(127);
  }
  return pid;
}

std::string Capture(const std::string& command) {
  std::string out;
  FILE* pipe = popen(command.c_str(), "r");
  if (pipe == nullptr) return out;
  char buf[4096];
  for (size_t n; (n = fread(buf, 1, sizeof(buf), pipe)) > 0;) out.append(buf, n);
  pclose(pipe);
  return out;
}

TEST(OpenAiServeProcessTest, BenchServeOpenAiBackendWritesVllmKeys) {
  const int port = FreePort(), http_port = FreePort();
  const pid_t pid = StartServer(port, http_port);
  ASSERT_TRUE(WaitServing(port, 30, pid));
  const HttpResult models = HttpCall(http_port, "GET", "/v1/models");
  ASSERT_EQ(models.status, 200);
  const nlohmann::json m = nlohmann::json::parse(models.body);
  ASSERT_EQ(m["data"].size(), 2u);
  EXPECT_EQ(m["data"][0]["id"], "tiny-stories");
  EXPECT_EQ(m["data"][1]["id"], "stories");

  const std::string report = Capture(
      std::string(HKV_BINARY) +
      " bench-serve --backend=openai --target=127.0.0.1:" + std::to_string(http_port) +
      " --num-requests=12 --concurrency=4 --input-len=24 --output-len=16 --json 2>/dev/null");
  const nlohmann::json j = nlohmann::json::parse(report, nullptr, false);
  ASSERT_FALSE(j.is_discarded()) << report;
  EXPECT_EQ(j["completed"], 12) << report;
  EXPECT_EQ(j["failed"], 0);
  EXPECT_EQ(j["total_input_tokens"], 12 * 24);
  EXPECT_EQ(j["total_output_tokens"], 12 * 16);
  for (const char* key :
       {"duration", "request_throughput", "output_throughput", "total_token_throughput"}) {
    EXPECT_GT(j[key].get<double>(), 0) << key;
  }
  for (const char* metric : {"ttft", "tpot", "itl", "e2el"}) {
    for (const char* stat : {"mean", "median", "std", "p99"}) {
      const std::string key = std::string(stat) + "_" + metric + "_ms";
      ASSERT_TRUE(j.contains(key)) << key;
      EXPECT_GE(j[key].get<double>(), 0) << key;
    }
  }
  EXPECT_GE(j["p99_e2el_ms"].get<double>(), j["median_e2el_ms"].get<double>());

  // SIGTERM with a stream in flight: the stream finishes, the server exits 0.
  HttpResult streamed;
  std::thread client([&] {
    streamed = HttpCall(http_port, "POST", "/v1/completions",
                        R"({"prompt": [1], "max_tokens": 400, "ignore_eos": true,
                            "stream": true})");
  });
  // Wait until the request runs, then ask the server to stop.
  for (int i = 0; i < 500; ++i) {
    const HttpResult metrics = HttpCall(http_port, "GET", "/metrics");
    if (metrics.body.find("hkv_requests_running 1") != std::string::npos) break;
    usleep(10000);
  }
  kill(pid, SIGTERM);
  client.join();
  EXPECT_EQ(streamed.status, 200);
  const std::vector<std::string> events = SseData(streamed.body);
  ASSERT_FALSE(events.empty());
  EXPECT_EQ(events.back(), "[DONE]");
  EXPECT_EQ(WaitExit(pid, 40), 0);
}

}  // namespace
}  // namespace hkv::testing
