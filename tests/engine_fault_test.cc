// Faults in the engine loop: a stalled step turns readiness NOT_SERVING (and back once it
// moves), and a failing device step fails in-flight requests and leaves the server not ready.
// The real CPU worker runs underneath a fault-injecting decorator.

#include <atomic>
#include <thread>

#include "gtest/gtest.h"
#include "tests/health_client.h"
#include "tests/server_test_util.h"
#include "workers/cpu/cpu_worker.h"

namespace hkv::testing {
namespace {

class FaultInjectingWorker : public Worker {
 public:
  explicit FaultInjectingWorker(std::unique_ptr<Worker> inner) : inner_(std::move(inner)) {}
  const ModelConfig& config() const override { return inner_->config(); }
  std::string name() const override { return inner_->name(); }
  absl::StatusOr<BatchResult> Execute(const Batch& batch) override {
    if (stall_ms.load() > 0)
      std::this_thread::sleep_for(std::chrono::milliseconds(stall_ms.exchange(0)));
    if (fail.load()) return absl::InternalError("injected device failure");
    return inner_->Execute(batch);
  }
  bool SupportsAdaptiveSelection() const override { return adaptive; }
  std::atomic<int> stall_ms{0};
  std::atomic<bool> fail{false};
  bool adaptive = true;  // set before requests arrive

 private:
  std::unique_ptr<Worker> inner_;
};

struct FaultServer {
  FaultServer() {
    ServerConfig config = TestServerConfig();
    auto loaded = LoadModelAndTokenizer(config.model, config.tokenizer);
    EXPECT_TRUE(loaded.ok()) << loaded.status();
    auto inner = std::make_unique<CpuWorker>(loaded->model, 4096, 16, 1);
    auto wrapper = std::make_unique<FaultInjectingWorker>(std::move(inner));
    worker = wrapper.get();
    EngineOptions options;
    options.kv.num_blocks = 4096;
    options.kv.block_size = 16;
    options.stall_timeout = absl::Milliseconds(300);
    engine = std::make_unique<Engine>(options, std::move(wrapper), loaded->tokenizer);
    engine->Start();
    server = std::make_unique<GrpcServer>(
        engine.get(), std::make_unique<GenerationService>(engine.get(), loaded->tokenizer, nullptr,
                                                          hkv::v1::ModelInfo()));
    auto port = server->Start("127.0.0.1", 0);
    EXPECT_TRUE(port.ok());
    channel = grpc::CreateChannel("127.0.0.1:" + std::to_string(*port),
                                  grpc::InsecureChannelCredentials());
  }
  ~FaultServer() {
    server->Shutdown();
    engine->Stop();
  }
  HealthStatus WaitFor(HealthStatus want, const char* service, int timeout_ms = 3000) {
    HealthStatus got = kUnknown;
    for (int waited = 0; waited < timeout_ms; waited += 50) {
      got = CheckHealth(channel, service, 500);
      if (got == want) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    return got;
  }
  FaultInjectingWorker* worker;
  std::unique_ptr<Engine> engine;
  std::unique_ptr<GrpcServer> server;
  std::shared_ptr<grpc::Channel> channel;
};

TEST(EngineFaultTest, StalledStepTurnsReadinessOffUntilItMoves) {
  FaultServer s;
  ASSERT_EQ(s.WaitFor(kServing, "hkv.v1.Generation"), kServing);
  s.worker->stall_ms = 2000;
  StreamResult result;
  std::thread client([&] {
    auto stub = hkv::v1::Generation::NewStub(s.channel);
    result = RunStream(stub.get(), GreedyIds({1}, 10));
  });
  EXPECT_EQ(s.WaitFor(kNotServing, "hkv.v1.Generation"), kNotServing);
  EXPECT_EQ(CheckHealth(s.channel, ""), kServing) << "liveness stays up while the step is slow";
  client.join();
  EXPECT_TRUE(result.status.ok()) << result.status.error_message();
  EXPECT_EQ(result.ids.size(), 10u);
  EXPECT_EQ(s.WaitFor(kServing, "hkv.v1.Generation"), kServing);
}

TEST(EngineFaultTest, DeviceFailureFailsRequestsAndStopsServing) {
  FaultServer s;
  ASSERT_EQ(s.WaitFor(kServing, "hkv.v1.Generation"), kServing);
  s.worker->fail = true;
  auto stub = hkv::v1::Generation::NewStub(s.channel);
  StreamResult failed = RunStream(stub.get(), GreedyIds({1}, 10));
  EXPECT_EQ(failed.status.error_code(), grpc::StatusCode::UNAVAILABLE)
      << failed.status.error_message();
  EXPECT_EQ(s.WaitFor(kNotServing, "hkv.v1.Generation"), kNotServing);
  StreamResult after = RunStream(stub.get(), GreedyIds({1}, 10));
  EXPECT_EQ(after.status.error_code(), grpc::StatusCode::UNAVAILABLE)
      << after.status.error_message();
}

TEST(EngineFaultTest, PolicyTheWorkerCannotRunIsRefusedWithoutHarm) {
  // A worker without adaptive (adakv) selection (a tensor-parallel group): such a request must
  // be refused up front, not fail a step (which would fail every request in flight and turn
  // readiness off).
  FaultServer s;
  s.worker->adaptive = false;
  ASSERT_EQ(s.WaitFor(kServing, "hkv.v1.Generation"), kServing);
  auto stub = hkv::v1::Generation::NewStub(s.channel);
  hkv::v1::GenerateRequest adakv = GreedyIds(std::vector<int32_t>(40, 5), 4);
  adakv.mutable_kv_policy()->set_name("adakv");
  adakv.mutable_kv_policy()->set_budget(16);
  StreamResult refused = RunStream(stub.get(), adakv);
  EXPECT_EQ(refused.status.error_code(), grpc::StatusCode::UNIMPLEMENTED)
      << refused.status.error_message();
  StreamResult ok = RunStream(stub.get(), GreedyIds({1}, 5));
  EXPECT_TRUE(ok.status.ok()) << ok.status.error_message();
  EXPECT_EQ(s.WaitFor(kServing, "hkv.v1.Generation"), kServing);
}

}  // namespace
}  // namespace hkv::testing
