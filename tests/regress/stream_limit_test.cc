// Defect: one thread per stream without bound (gRPC's synchronous server: 1,000 streams ran on
// 1,023 threads), and no limit on concurrent streams. Now the service admits at most
// --max-concurrent-streams Generate/Complete calls (RESOURCE_EXHAUSTED with the flag's name
// past it, exactly) and the handler pool is capped just above that. The engine's worker is
// held inside a step so that the admitted streams stay open while the test counts.

#include <dirent.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/synchronization/notification.h"
#include "gtest/gtest.h"
#include "tests/health_client.h"
#include "tests/server_test_util.h"
#include "workers/cpu/cpu_worker.h"

namespace hkv::testing {
namespace {

constexpr int kLimit = 8;
// The pool's cap beyond the limit (grpc_server.cc: idle pollers and quick calls).
constexpr int kThreadsBeyondStreams = 16;

// The real CPU worker, held in Execute until released.
class GatedWorker : public Worker {
 public:
  explicit GatedWorker(std::unique_ptr<Worker> inner) : inner_(std::move(inner)) {}
  const ModelConfig& config() const override { return inner_->config(); }
  std::string name() const override { return inner_->name(); }
  absl::StatusOr<BatchResult> Execute(const Batch& batch) override {
    release.WaitForNotification();
    return inner_->Execute(batch);
  }
  absl::Notification release;

 private:
  std::unique_ptr<Worker> inner_;
};

// Threads of this process that run gRPC's synchronous handlers (named by gRPC).
int SyncServerThreads() {
  int count = 0;
  DIR* dir = opendir("/proc/self/task");
  if (dir == nullptr) return -1;
  while (dirent* entry = readdir(dir)) {
    if (entry->d_name[0] == '.') continue;
    std::ifstream comm(std::string("/proc/self/task/") + entry->d_name + "/comm");
    std::string name;
    std::getline(comm, name);
    count += name.rfind("grpcpp_sync_ser", 0) == 0;
  }
  closedir(dir);
  return count;
}

struct LimitedServer {
  LimitedServer() {
    ServerConfig config = TestServerConfig();
    auto loaded = LoadModelAndTokenizer(config.model, config.tokenizer);
    EXPECT_TRUE(loaded.ok()) << loaded.status();
    auto gated =
        std::make_unique<GatedWorker>(std::make_unique<CpuWorker>(loaded->model, 4096, 16, 1));
    worker = gated.get();
    EngineOptions options;
    options.kv.num_blocks = 4096;
    options.kv.block_size = 16;
    engine = std::make_unique<Engine>(options, std::move(gated), loaded->tokenizer);
    engine->Start();
    auto service = std::make_unique<GenerationService>(engine.get(), loaded->tokenizer, nullptr,
                                                       hkv::v1::ModelInfo());
    server = std::make_unique<GrpcServer>(engine.get(), std::move(service));
    GrpcServerOptions server_options;
    server_options.max_concurrent_streams = kLimit;
    auto port = server->Start("127.0.0.1", 0, server_options);
    EXPECT_TRUE(port.ok()) << port.status();
    channel = LoopbackChannel(*port);
  }
  ~LimitedServer() {
    if (!worker->release.HasBeenNotified()) worker->release.Notify();
    server->Shutdown();
    engine->Stop();
  }
  GatedWorker* worker;
  std::unique_ptr<Engine> engine;
  std::unique_ptr<GrpcServer> server;
  std::shared_ptr<grpc::Channel> channel;
};

TEST(StreamLimitTest, StreamsPastTheLimitAreRefusedAndThreadsStayBounded) {
  LimitedServer s;
  std::vector<StreamResult> admitted(kLimit);
  std::vector<std::thread> clients;
  for (int i = 0; i < kLimit; ++i) {
    clients.emplace_back([&, i] {
      auto stub = hkv::v1::Generation::NewStub(s.channel);
      admitted[i] = RunStream(stub.get(), GreedyIds({1}, 40));
    });
  }
  // All eight are in their handlers (the worker holds the first step, so none can finish).
  for (int waited = 0; s.server->service()->calls_in_flight() < kLimit && waited < 20000;
       waited += 10) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ASSERT_EQ(s.server->service()->calls_in_flight(), kLimit);

  auto stub = hkv::v1::Generation::NewStub(s.channel);
  // Deadlines bound the test when calls are not refused; refusals come in milliseconds.
  StreamResult ninth = RunStream(stub.get(), GreedyIds({1}, 4), 10);
  EXPECT_EQ(ninth.status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED)
      << ninth.status.error_message();
  EXPECT_NE(ninth.status.error_message().find("--max-concurrent-streams"), std::string::npos)
      << ninth.status.error_message();
  hkv::v1::GenerateResponse unary;
  {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    grpc::Status complete = stub->Complete(&context, GreedyIds({1}, 4), &unary);
    EXPECT_EQ(complete.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED)
        << "Complete counts against the same limit";
  }

  // Many more at once: every one is refused, and the handler threads stay bounded (before the
  // fix, each waited on its own thread).
  constexpr int kFlood = 64;
  std::vector<grpc::StatusCode> flood(kFlood);
  std::atomic<bool> flooding{true};
  std::atomic<int> most_threads{SyncServerThreads()};
  std::thread sampler([&] {
    while (flooding.load()) {
      most_threads = std::max(most_threads.load(), SyncServerThreads());
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
  });
  std::vector<std::thread> flooders;
  for (int i = 0; i < kFlood; ++i) {
    flooders.emplace_back([&, i] {
      auto own = hkv::v1::Generation::NewStub(s.channel);
      flood[i] = RunStream(own.get(), GreedyIds({1}, 4), 10).status.error_code();
    });
  }
  for (auto& t : flooders) t.join();
  most_threads = std::max(most_threads.load(), SyncServerThreads());
  flooding = false;
  sampler.join();
  for (int i = 0; i < kFlood; ++i) {
    EXPECT_EQ(flood[i], grpc::StatusCode::RESOURCE_EXHAUSTED) << "stream " << i;
  }
  EXPECT_GT(most_threads.load(), 0) << "gRPC's handler threads are named grpcpp_sync_server";
  EXPECT_LE(most_threads.load(), kLimit + kThreadsBeyondStreams);

  // Health checks and quick calls are still answered while every stream slot is taken.
  EXPECT_EQ(CheckHealth(s.channel, kReadinessService), kServing);
  {
    grpc::ClientContext context;
    hkv::v1::ModelInfo info;
    EXPECT_TRUE(stub->GetModelInfo(&context, hkv::v1::GetModelInfoRequest(), &info).ok());
  }
  EXPECT_EQ(s.server->service()->calls_in_flight(), kLimit);

  s.worker->release.Notify();
  for (auto& t : clients) t.join();
  for (int i = 0; i < kLimit; ++i) {
    EXPECT_TRUE(admitted[i].status.ok()) << i << ": " << admitted[i].status.error_message();
    EXPECT_EQ(admitted[i].ids, std::vector<int32_t>(std::begin(kGoldenIds), std::end(kGoldenIds)));
  }
  EXPECT_EQ(s.server->service()->calls_in_flight(), 0);
  StreamResult after = RunStream(stub.get(), GreedyIds({1}, 4));
  EXPECT_TRUE(after.status.ok()) << "slots are given back: " << after.status.error_message();
}

}  // namespace
}  // namespace hkv::testing
