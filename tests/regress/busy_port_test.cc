// Defect: a second `hkv serve` on a port already served started and silently shared it (gRPC
// sets SO_REUSEPORT by default, cpp-httplib did too), so the kernel split new connections
// between two servers. Now both ports are bound exclusively: the second server exits non-zero
// with a "port in use" message, and the first keeps serving. Runs two real `hkv serve`.

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fstream>
#include <sstream>
#include <string>

#include "gtest/gtest.h"
#include "server/tcp_socket.h"
#include "tests/server_test_util.h"

namespace hkv::testing {
namespace {

int FreePort() {
  absl::StatusOr<int> port = tcp::PickFreePort();
  EXPECT_TRUE(port.ok()) << port.status();
  return port.value_or(0);
}

// Starts `hkv serve` on loopback with its stderr in `stderr_path`.
pid_t StartServer(int port, int metrics_port, const std::string& stderr_path) {
  pid_t pid = fork();
  if (pid == 0) {
    const int fd = ::open(stderr_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd >= 0) ::dup2(fd, STDERR_FILENO);
    const std::string port_flag = "--port=" + std::to_string(port);
    const std::string metrics_flag = "--metrics-port=" + std::to_string(metrics_port);
    // Metrics listen on loopback by default (--metrics-host).
    execl(HKV_BINARY, HKV_BINARY, "serve", "--host=127.0.0.1", port_flag.c_str(),
          metrics_flag.c_str(), "--http-port=0", "--kv-pool-blocks=1024", "--num-threads=1",
          static_cast<char*>(nullptr));
    _exit(127);
  }
  return pid;
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

class BusyPortTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = ::testing::TempDir();
    port_ = FreePort();
    metrics_port_ = FreePort();
    first_ = StartServer(port_, metrics_port_, dir_ + "/busy_port_first.err");
    ASSERT_TRUE(WaitServing(port_, 30, first_)) << ReadFile(dir_ + "/busy_port_first.err");
  }
  void TearDown() override {
    if (first_ > 0) {
      kill(first_, SIGTERM);
      EXPECT_EQ(WaitExit(first_, 30), 0);
    }
  }
  // The first server still answers, with the golden continuation.
  void ExpectFirstStillServes() {
    auto stub = hkv::v1::Generation::NewStub(LoopbackChannel(port_));
    StreamResult r = RunStream(stub.get(), GreedyIds({1}, 40));
    ASSERT_TRUE(r.status.ok()) << r.status.error_message();
    EXPECT_EQ(r.ids, std::vector<int32_t>(std::begin(kGoldenIds), std::end(kGoldenIds)));
  }

  std::string dir_;
  int port_ = 0, metrics_port_ = 0;
  pid_t first_ = 0;
};

// A server that cannot take its port exits at once (model load, then bind); 20 s is generous.
constexpr int kExitBoundS = 20;

TEST_F(BusyPortTest, SecondServerOnTheGrpcPortExitsWithPortInUse) {
  const std::string err = dir_ + "/busy_port_second.err";
  const pid_t second = StartServer(port_, FreePort(), err);
  const int status = WaitExit(second, kExitBoundS);
  EXPECT_EQ(status, 1) << "the second server must refuse the port (-1: it kept running)";
  const std::string text = ReadFile(err);
  EXPECT_NE(text.find("127.0.0.1:" + std::to_string(port_) + " is in use"), std::string::npos)
      << text;
  EXPECT_NE(text.find("--port"), std::string::npos) << text;
  ExpectFirstStillServes();
}

TEST_F(BusyPortTest, SecondServerOnTheMetricsPortExitsWithPortInUse) {
  const std::string err = dir_ + "/busy_port_metrics.err";
  const pid_t second = StartServer(FreePort(), metrics_port_, err);
  const int status = WaitExit(second, kExitBoundS);
  EXPECT_EQ(status, 1) << "the second server must refuse the port (-1: it kept running)";
  const std::string text = ReadFile(err);
  EXPECT_NE(text.find("127.0.0.1:" + std::to_string(metrics_port_) + " is in use"),
            std::string::npos)
      << text;
  EXPECT_NE(text.find("--metrics-port"), std::string::npos) << text;
  ExpectFirstStillServes();
}

}  // namespace
}  // namespace hkv::testing
