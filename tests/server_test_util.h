#pragma once
// Test fixtures: an in-process hkv server on a loopback port with the embedded stories260K
// model, and small client helpers.

#include <sys/types.h>

#include <memory>
#include <string>
#include <vector>

#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "hkv/v1/generation.grpc.pb.h"
#include "server/grpc_server.h"
#include "server/model_setup.h"

namespace hkv::testing {

inline constexpr int32_t kGoldenIds[40] = {403, 407, 261, 378, 432, 383, 286, 261, 376, 298,
                                           315, 421, 395, 317, 426, 338, 401, 396, 267, 337,
                                           410, 408, 419, 292, 411, 322, 265, 282, 295, 433,
                                           426, 385, 328, 432, 358, 394, 261, 370, 432, 352};

// The embedded model, a small pool, loopback only.
ServerConfig TestServerConfig();

class TestServer;

// A fixture whose tests share one in-process server (TestServerConfig()), started before the
// suite's first test and stopped after its last. Derive a named fixture from it per suite.
class SharedServerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite();
  static void TearDownTestSuite();
  static inline TestServer* server_ = nullptr;
};

class TestServer {
 public:
  explicit TestServer(const ServerConfig& config);
  ~TestServer();
  std::unique_ptr<hkv::v1::Generation::Stub> NewStub() const;
  std::shared_ptr<grpc::Channel> channel() const { return channel_; }
  Engine& engine() { return *bundle_.engine; }
  GrpcServer& server() { return *server_; }
  int port() const { return port_; }

 private:
  EngineBundle bundle_;
  std::unique_ptr<GrpcServer> server_;
  std::shared_ptr<grpc::Channel> channel_;
  int port_ = 0;
};

struct StreamResult {
  grpc::Status status;
  std::vector<int32_t> ids;
  std::string text;
  hkv::v1::FinishReason finish = hkv::v1::FINISH_REASON_UNSPECIFIED;
  hkv::v1::Usage usage;
  int messages = 0;
};

// Runs one streamed Generate to completion.
StreamResult RunStream(hkv::v1::Generation::Stub* stub, const hkv::v1::GenerateRequest& request,
                       int timeout_s = 60);

hkv::v1::GenerateRequest GreedyIds(std::vector<int32_t> ids, int max_tokens);

// For tests that run the hkv binary: a channel to 127.0.0.1:port; waiting until the server there
// reports readiness SERVING (false after `timeout_s`, or as soon as process `pid`, when given,
// has exited); waiting for process `pid` to exit (its status, 128 + signal when killed, or -1
// after `timeout_s`, when it is killed).
std::shared_ptr<grpc::Channel> LoopbackChannel(int port);
bool WaitServing(int port, int timeout_s, pid_t pid = 0);
int WaitExit(pid_t pid, int timeout_s);

inline void SharedServerTest::SetUpTestSuite() { server_ = new TestServer(TestServerConfig()); }
inline void SharedServerTest::TearDownTestSuite() {
  delete server_;
  server_ = nullptr;
}

}  // namespace hkv::testing
