// Process-level tests of `hkv serve`: SIGTERM drains and exits 0; a server killed mid-load
// can be restarted and serves again. Runs the real binary on loopback ports.

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "httplib.h"
#include "nlohmann/json.hpp"
#include "tests/health_client.h"
#include "tests/server_test_util.h"

namespace hkv::testing {
namespace {

// A port nobody uses: bind port 0, read it back, close.
int FreePort() {
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
  auto server = builder.BuildAndStart();
  server->Shutdown();
  return port;
}

pid_t StartServer(int port, int drain_s, int metrics_port = 0) {
  pid_t pid = fork();
  if (pid == 0) {
    const std::string port_flag = "--port=" + std::to_string(port);
    const std::string drain_flag = "--drain-timeout-s=" + std::to_string(drain_s);
    const std::string metrics_flag = "--metrics-port=" + std::to_string(metrics_port);
    execl(HKV_BINARY, HKV_BINARY, "serve", "--host=127.0.0.1", port_flag.c_str(),
          metrics_flag.c_str(), "--http-port=0", "--kv-pool-blocks=4096", "--num-threads=1",
          drain_flag.c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  return pid;
}

// Runs a shell command, returning its stdout.
std::string Capture(const std::string& command) {
  FILE* pipe = popen(command.c_str(), "r");
  std::string out;
  char buffer[4096];
  size_t n;
  while ((n = fread(buffer, 1, sizeof(buffer), pipe)) > 0) out.append(buffer, n);
  pclose(pipe);
  return out;
}

TEST(ServeProcessTest, SigtermDrainsInFlightRequestsAndExitsZero) {
  const int port = FreePort();
  pid_t pid = StartServer(port, /*drain_s=*/20);
  ASSERT_TRUE(WaitServing(port, 30));
  auto stub = hkv::v1::Generation::NewStub(LoopbackChannel(port));
  StreamResult result;
  std::thread client([&] {
    hkv::v1::GenerateRequest r = GreedyIds({1}, 400);
    r.mutable_sampling()->set_ignore_eos(true);
    result = RunStream(stub.get(), r);
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(150));
  kill(pid, SIGTERM);
  client.join();
  EXPECT_TRUE(result.status.ok()) << result.status.error_message();
  EXPECT_EQ(result.ids.size(), 400u) << "the in-flight request must finish during the drain";
  EXPECT_EQ(WaitExit(pid, 30), 0);
}

TEST(ServeProcessTest, WorkerFailureFailsRequestsAndExitsNonZero) {
  // A device that fails mid-request (injected after 20 steps): the request ends UNAVAILABLE,
  // readiness turns NOT_SERVING, and the process exits 3 instead of serving nothing forever.
  const int port = FreePort();
  setenv("HKV_FAULT_WORKER_FAIL_AFTER_STEPS", "20", 1);
  pid_t pid = StartServer(port, 5);
  unsetenv("HKV_FAULT_WORKER_FAIL_AFTER_STEPS");
  ASSERT_TRUE(WaitServing(port, 30));
  auto stub = hkv::v1::Generation::NewStub(LoopbackChannel(port));
  hkv::v1::GenerateRequest r = GreedyIds({1}, 100);
  r.mutable_sampling()->set_ignore_eos(true);
  StreamResult result = RunStream(stub.get(), r);
  EXPECT_EQ(result.status.error_code(), grpc::StatusCode::UNAVAILABLE)
      << result.status.error_message();
  EXPECT_EQ(WaitExit(pid, 30), 3);
}

TEST(ServeProcessTest, KilledMidLoadRestartsAndServesAgain) {
  const int port = FreePort();
  pid_t pid = StartServer(port, 5);
  ASSERT_TRUE(WaitServing(port, 30));
  std::vector<std::thread> clients;
  std::vector<StreamResult> results(8);
  for (int i = 0; i < 8; ++i) {
    clients.emplace_back([&, i] {
      auto stub = hkv::v1::Generation::NewStub(LoopbackChannel(port));
      hkv::v1::GenerateRequest r = GreedyIds({1}, 450);
      r.mutable_sampling()->set_ignore_eos(true);
      results[i] = RunStream(stub.get(), r, 20);
    });
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  kill(pid, SIGKILL);
  for (auto& t : clients) t.join();
  WaitExit(pid, 5);
  int failed = 0;
  for (const StreamResult& r : results) failed += !r.status.ok();
  EXPECT_GT(failed, 0) << "some streams must have been cut by the kill";
  pid = StartServer(port, 5);
  ASSERT_TRUE(WaitServing(port, 30)) << "restarted server never turned SERVING";
  auto stub = hkv::v1::Generation::NewStub(LoopbackChannel(port));
  StreamResult r = RunStream(stub.get(), GreedyIds({1}, 40));
  ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  EXPECT_EQ(r.ids, std::vector<int32_t>(std::begin(kGoldenIds), std::end(kGoldenIds)));
  kill(pid, SIGTERM);
  EXPECT_EQ(WaitExit(pid, 30), 0);
}

TEST(ServeProcessTest, BenchServeAndMetricsAgainstARealServer) {
  const int port = FreePort(), metrics_port = FreePort();
  pid_t pid = StartServer(port, 5, metrics_port);
  ASSERT_TRUE(WaitServing(port, 30));
  const std::string times_path = ::testing::TempDir() + "/bench_token_times.jsonl";
  const std::string report =
      Capture(std::string(HKV_BINARY) + " bench-serve --target=127.0.0.1:" + std::to_string(port) +
              " --num-requests=12 --concurrency=4 --input-len=24 --output-len=16 --json" +
              " --token-times-out=" + times_path + " 2>/dev/null");
  nlohmann::json j = nlohmann::json::parse(report, nullptr, false);
  ASSERT_FALSE(j.is_discarded()) << report;
  EXPECT_EQ(j["successful_requests"], 12);
  EXPECT_EQ(j["output_tokens"], 12 * 16);
  EXPECT_GT(j["output_throughput"].get<double>(), 0);
  EXPECT_GT(j["ttft_ms"]["p99"].get<double>(), 0);
  EXPECT_GE(j["e2e_ms"]["p99"].get<double>(), j["e2e_ms"]["p50"].get<double>());
  EXPECT_GE(j["itl_ms"]["p99.9"].get<double>(), j["itl_ms"]["p99"].get<double>());
  EXPECT_GE(j["itl_ms"]["max"].get<double>(), j["itl_ms"]["p99.9"].get<double>());
  // The token times: one line per request, ascending after its send; their largest gap is the
  // reported ITL max.
  std::ifstream times(times_path);
  std::string line;
  int lines = 0;
  double worst_gap_ms = 0;
  while (std::getline(times, line)) {
    ++lines;
    nlohmann::json t = nlohmann::json::parse(line);
    const std::vector<double> at = t["token_s"].get<std::vector<double>>();
    ASSERT_FALSE(at.empty());
    ASSERT_LE(at.size(), 16u);
    EXPECT_GE(at[0], t["start_s"].get<double>());
    for (size_t i = 1; i < at.size(); ++i) {
      EXPECT_GE(at[i], at[i - 1]);
      worst_gap_ms = std::max(worst_gap_ms, (at[i] - at[i - 1]) * 1e3);
    }
  }
  EXPECT_EQ(lines, 12);
  EXPECT_NEAR(worst_gap_ms, j["itl_ms"]["max"].get<double>(), 1e-3);
  // Prometheus exposition over HTTP.
  httplib::Client http("127.0.0.1", metrics_port);
  auto response = http.Get("/metrics");
  ASSERT_TRUE(response) << "no answer on the metrics port";
  EXPECT_EQ(response->status, 200);
  const std::string metrics = response->body;
  for (const char* name :
       {"hkv_requests_waiting 0", "hkv_requests_running 0", "hkv_generation_tokens_total 192",
        "hkv_kv_pool_usage_ratio 0", "hkv_time_to_first_token_seconds_count 12", "hkv_ready 1"}) {
    EXPECT_NE(metrics.find(name), std::string::npos) << name << "\n" << metrics;
  }
  kill(pid, SIGTERM);
  EXPECT_EQ(WaitExit(pid, 30), 0);
}

}  // namespace
}  // namespace hkv::testing
