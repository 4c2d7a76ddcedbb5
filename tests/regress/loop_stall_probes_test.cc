// Defect: the probes did not see stalls. Liveness ("") was SERVING for ever, and readiness
// timed only Worker::Execute, so an engine loop stuck anywhere else (delivering output,
// draining the inbox) kept both SERVING. Now the watchdog times each whole loop iteration:
// readiness turns NOT_SERVING past engine_stall_timeout_s, liveness past
// engine_liveness_timeout_s or when the loop is dead. HKV_FAULT_ENGINE_STALL_MS stalls the loop
// once, outside Execute, after its first step.

#include <cstdlib>
#include <thread>

#include "gtest/gtest.h"
#include "tests/health_client.h"
#include "tests/server_test_util.h"

namespace hkv::testing {
namespace {

constexpr char kStallMs[] = "6000";

std::unique_ptr<TestServer> StallingServer() {
  setenv("HKV_FAULT_ENGINE_STALL_MS", kStallMs, 1);
  ServerConfig config = TestServerConfig();
  config.engine_stall_timeout_s = 1;
  config.engine_liveness_timeout_s = 2;
  auto server = std::make_unique<TestServer>(config);
  unsetenv("HKV_FAULT_ENGINE_STALL_MS");
  return server;
}

HealthStatus WaitFor(const std::shared_ptr<grpc::Channel>& channel, const std::string& service,
                     HealthStatus want, int timeout_ms) {
  HealthStatus got = kUnknown;
  for (int waited = 0; waited < timeout_ms; waited += 50) {
    got = CheckHealth(channel, service, 500);
    if (got == want) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return got;
}

TEST(LoopStallProbesTest, StallOutsideTheStepTurnsReadinessThenLivenessOffAndBack) {
  std::unique_ptr<TestServer> server = StallingServer();
  auto channel = server->channel();
  ASSERT_EQ(WaitFor(channel, kReadinessService, kServing, 5000), kServing);
  ASSERT_EQ(CheckHealth(channel, kLivenessService), kServing);

  StreamResult result;
  std::thread client([&] {
    auto stub = server->NewStub();
    result = RunStream(stub.get(), GreedyIds({1}, 10));
  });
  // The first step runs, then the loop sleeps 6 s: past the stall timeout (1 s) readiness goes,
  // past the liveness timeout (2 s) liveness goes too. The watchdog polls every 0.2 s.
  bool saw_not_ready = false, saw_not_live = false;
  for (int waited = 0; waited < 10000 && !(saw_not_ready && saw_not_live); waited += 50) {
    saw_not_ready |= CheckHealth(channel, kReadinessService, 500) == kNotServing;
    saw_not_live |= CheckHealth(channel, kLivenessService, 500) == kNotServing;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  EXPECT_TRUE(saw_not_ready) << "readiness stayed SERVING while the loop stalled";
  EXPECT_TRUE(saw_not_live) << "liveness stayed SERVING while the loop stalled";

  client.join();
  EXPECT_TRUE(result.status.ok()) << result.status.error_message();
  EXPECT_EQ(result.ids.size(), 10u) << "the request finishes once the loop moves again";
  EXPECT_EQ(WaitFor(channel, kReadinessService, kServing, 5000), kServing);
  EXPECT_EQ(WaitFor(channel, kLivenessService, kServing, 5000), kServing);
}

TEST(LoopStallProbesTest, DeadEngineLoopTurnsLivenessOff) {
  TestServer server(TestServerConfig());
  auto channel = server.channel();
  ASSERT_EQ(WaitFor(channel, kLivenessService, kServing, 5000), kServing);
  server.engine().Stop();  // The loop is gone; only a restart can bring it back.
  EXPECT_EQ(WaitFor(channel, kLivenessService, kNotServing, 5000), kNotServing);
  EXPECT_EQ(CheckHealth(channel, kReadinessService), kNotServing);
}

}  // namespace
}  // namespace hkv::testing
