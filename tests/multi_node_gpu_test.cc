// Multi-node tensor parallelism with real processes: two `hkv serve` processes on one machine,
// one GPU each (CUDA_VISIBLE_DEVICES), form a TP=2 group over gRPC and NCCL exactly as two
// LeaderWorkerSet pods would. Checks that the group serves what a single process with the same
// two GPUs serves (greedy tokens and kept-KV counts equal: a 2-rank bf16 all-reduce adds the same
// two numbers either way), and the faults: node 0 draining stops node 1 cleanly (node 1 serves on
// through its own SIGTERM until then); a node 1 killed
// mid-request fails that request with UNAVAILABLE and node 0 exits non-zero; a node 0 killed
// makes node 1 exit non-zero. Needs two GPUs (skips otherwise).

#include <cuda_runtime.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include "common/paths.h"
#include "gtest/gtest.h"
#include "server/tcp_socket.h"
#include "tests/health_client.h"
#include "tests/server_test_util.h"

namespace hkv::testing {
namespace {

int GpuCount() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess ? n : 0;
}

int FreePort() {
  auto port = tcp::PickFreePort();
  EXPECT_TRUE(port.ok()) << port.status();
  return *port;
}

// The hkv binary beside this test (in a build's bin/ or a carried bundle's), else the one this
// test was built with.
std::string HkvBinary() {
  const std::string beside = ExecutableDir() + "/hkv";
  return access(beside.c_str(), X_OK) == 0 ? beside : std::string(HKV_BINARY);
}

// `hkv serve` on the transformers fixture (2 KV heads: one per rank) with `extra` flags, on the
// GPUs in `visible`.
pid_t StartServe(const std::string& visible, const std::vector<std::string>& extra) {
  std::vector<std::string> args = {HkvBinary(),
                                   "serve",
                                   "--model=" + SourceDir() + "/tests/data/hf/llama_hd64",
                                   "--device=cuda",
                                   "--host=127.0.0.1",
                                   "--metrics-port=0",
                                   "--http-port=0",
                                   "--kv-pool-blocks=2048",
                                   "--max-seqs=8",
                                   "--tensor-parallel-size=2",
                                   "--tp-head-placement=contiguous",
                                   "--dist-join-timeout-s=60"};
  args.insert(args.end(), extra.begin(), extra.end());
  pid_t pid = fork();
  if (pid == 0) {
    setenv("CUDA_VISIBLE_DEVICES", visible.c_str(), 1);
    setenv("NCCL_NVLS_ENABLE", "0", 0);
    std::vector<char*> argv;
    for (std::string& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    execv(argv[0], argv.data());
    _exit(127);
  }
  return pid;
}

// Node 0 (serving gRPC on `grpc_port`) and node 1 of a 2-node group.
struct Group {
  Group(int grpc_port, int dist_port) {
    const std::string addr = "--dist-addr=127.0.0.1:" + std::to_string(dist_port);
    // The nodes authenticate each other with a shared token (--dist-token).
    const std::string token = "--dist-token=multi-node-gpu-test-token";
    follower = StartServe("1", {addr, "--world-size=2", "--rank=1", token});
    leader = StartServe(
        "0", {addr, "--world-size=2", "--rank=0", "--port=" + std::to_string(grpc_port), token});
  }
  ~Group() {
    for (pid_t p : {leader, follower}) {
      if (waitpid(p, nullptr, WNOHANG) == 0) {
        kill(p, SIGKILL);
        waitpid(p, nullptr, 0);
      }
    }
  }
  pid_t leader, follower;
};

std::vector<hkv::v1::GenerateRequest> Requests() {
  std::vector<hkv::v1::GenerateRequest> out;
  for (int i = 0; i < 3; ++i) {
    std::vector<int32_t> prompt;
    for (int t = 0; t < 20 + 25 * i; ++t) prompt.push_back(3 + (t * 37 + i * 11) % 250);
    hkv::v1::GenerateRequest r = GreedyIds(prompt, 24);
    r.mutable_sampling()->set_ignore_eos(true);
    if (i == 2) {  // a compressed prefill: kept counts come from both nodes' heads
      r.mutable_kv_policy()->set_name("snapkv");
      r.mutable_kv_policy()->set_budget(24);
    }
    out.push_back(r);
  }
  return out;
}

std::vector<StreamResult> RunAll(int port) {
  auto stub = hkv::v1::Generation::NewStub(LoopbackChannel(port));
  std::vector<StreamResult> out;
  for (const auto& r : Requests()) out.push_back(RunStream(stub.get(), r));
  return out;
}

TEST(MultiNodeGpuTest, TwoProcessesServeWhatOneProcessServesAndStopTogether) {
  if (GpuCount() < 2) GTEST_SKIP() << "needs 2 GPUs, found " << GpuCount();
  std::vector<StreamResult> want;
  {
    const int port = FreePort();
    pid_t single = StartServe("0,1", {"--port=" + std::to_string(port)});
    ASSERT_TRUE(WaitServing(port, 120, single));
    want = RunAll(port);
    kill(single, SIGTERM);
    EXPECT_EQ(WaitExit(single, 60), 0);
  }
  const int port = FreePort();
  Group g(port, FreePort());
  ASSERT_TRUE(WaitServing(port, 120, g.leader));
  const std::vector<StreamResult> got = RunAll(port);
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) {
    ASSERT_TRUE(want[i].status.ok()) << want[i].status.error_message();
    ASSERT_TRUE(got[i].status.ok()) << got[i].status.error_message();
    EXPECT_EQ(got[i].ids, want[i].ids) << "request " << i;
    EXPECT_EQ(got[i].usage.kv_tokens_kept(), want[i].usage.kv_tokens_kept()) << "request " << i;
  }
  EXPECT_LT(got[2].usage.kv_tokens_kept(), got[2].usage.kv_tokens_full());
  // Pods of a group are terminated together: node 1, signalled first, keeps serving node 0's
  // requests until node 0 has drained; node 0 then stops it and both exit 0.
  kill(g.follower, SIGTERM);
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  const std::vector<StreamResult> after = RunAll(port);
  for (size_t i = 0; i < after.size(); ++i) {
    EXPECT_TRUE(after[i].status.ok()) << after[i].status.error_message();
    EXPECT_EQ(after[i].ids, want[i].ids) << "request " << i << " after node 1's SIGTERM";
  }
  kill(g.leader, SIGTERM);
  EXPECT_EQ(WaitExit(g.leader, 60), 0);
  EXPECT_EQ(WaitExit(g.follower, 30), 0);
}

TEST(MultiNodeGpuTest, KilledFollowerFailsInFlightRequestsAndNodeZeroExits) {
  if (GpuCount() < 2) GTEST_SKIP() << "needs 2 GPUs, found " << GpuCount();
  const int port = FreePort();
  Group g(port, FreePort());
  ASSERT_TRUE(WaitServing(port, 120, g.leader));
  auto stub = hkv::v1::Generation::NewStub(LoopbackChannel(port));
  hkv::v1::GenerateRequest r = GreedyIds({1, 5, 9}, 480);
  r.mutable_sampling()->set_ignore_eos(true);
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(120));
  auto reader = stub->Generate(&context, r);
  hkv::v1::GenerateResponse response;
  ASSERT_TRUE(reader->Read(&response));  // decoding has begun: kill node 1 mid-request
  kill(g.follower, SIGKILL);
  size_t tokens = response.token_ids_size();
  while (reader->Read(&response)) tokens += response.token_ids_size();
  const grpc::Status status = reader->Finish();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE) << status.error_message();
  EXPECT_LT(tokens, 480u);
  EXPECT_EQ(WaitExit(g.leader, 120), 3);
}

TEST(MultiNodeGpuTest, KilledNodeZeroEndsTheFollowerNonZero) {
  if (GpuCount() < 2) GTEST_SKIP() << "needs 2 GPUs, found " << GpuCount();
  const int port = FreePort();
  Group g(port, FreePort());
  ASSERT_TRUE(WaitServing(port, 120, g.leader));
  kill(g.leader, SIGKILL);
  EXPECT_EQ(WaitExit(g.follower, 60), 3);
}

}  // namespace
}  // namespace hkv::testing
