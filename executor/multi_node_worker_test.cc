// The multi-node step transport on real sockets, with CPU workers on the real stories260K
// checkpoint standing in for each node's ranks (the CUDA group is tested on GPUs in
// tests/multi_node_gpu_test.cc): joining, steps reaching every node, kept-count merging, and
// every way a group breaks (a follower that fails, hangs, or disappears; a leader that goes away;
// a node with another configuration).

#include "executor/multi_node_worker.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>

#include "absl/strings/str_cat.h"
#include "common/paths.h"
#include "gtest/gtest.h"
#include "model/llama2c_loader.h"
#include "workers/cpu/cpu_worker.h"
#include "workers/test_batch_builder.h"

namespace hkv {
namespace {

using testing::BatchBuilder;
using testing::kBlockSize;
using testing::kBlocksPerRow;
using testing::TestSeq;

std::shared_ptr<const Model> Stories() {
  static std::shared_ptr<const Model> model = [] {
    auto m = LoadLlama2cCheckpoint(DefaultModelPath());
    EXPECT_TRUE(m.ok()) << m.status();
    return std::make_shared<const Model>(std::move(*m));
  }();
  return model;
}

std::unique_ptr<CpuWorker> MakeCpu() {
  const ModelConfig& c = Stories()->config;
  return std::make_unique<CpuWorker>(Stories(), 4 * c.num_layers * c.num_kv_heads * kBlocksPerRow,
                                     kBlockSize, 1);
}

// A node's ranks as seen from the transport: a real CPU worker that reports only the kept
// counts of the (layer, KV head) rows it owns (as a tensor-parallel rank does), counts its
// steps, and can be told to fail or stall.
class NodeWorker : public Worker {
 public:
  NodeWorker(std::unique_ptr<Worker> inner, int32_t node, int32_t nodes)
      : inner_(std::move(inner)), node_(node), nodes_(nodes) {}
  const ModelConfig& config() const override { return inner_->config(); }
  std::string name() const override { return absl::StrCat("node ", node_); }
  absl::StatusOr<BatchResult> Execute(const Batch& batch) override {
    ++steps;
    if (fail_at_step >= 0 && steps > fail_at_step) return absl::UnavailableError("injected");
    for (absl::Time end = absl::Now() + stall; absl::Now() < end;) {
      if (cancelled) return absl::UnavailableError("step cancelled");
      absl::SleepFor(absl::Milliseconds(5));
    }
    auto r = inner_->Execute(batch);
    if (!r.ok()) return r;
    for (SequenceResult& s : r->seqs) {
      for (size_t h = 0; h < s.kept_per_head.size(); ++h) {
        if (static_cast<int32_t>(h) % nodes_ != node_) s.kept_per_head[h] = 0;
      }
      if (node_ != 0) s.token = -1;  // only rank 0 samples
    }
    return r;
  }
  void CancelStep() override { cancelled = true; }
  std::atomic<int> steps{0};
  std::atomic<bool> cancelled{false};
  int fail_at_step = -1;
  absl::Duration stall = absl::ZeroDuration();

 private:
  std::unique_ptr<Worker> inner_;
  int32_t node_, nodes_;
};

DistLayout Layout(int port, int32_t world, int32_t rank) {
  return DistLayout{"127.0.0.1", port, world, rank};
}

// A follower node on its own thread: joins, then serves steps until the leader stops it.
struct Follower {
  Follower(int port, int32_t world, int32_t node, std::string fingerprint = "stories")
      : worker(MakeCpu(), node, world) {
    thread = std::thread([=, this] {
      auto conn = ConnectToLeader(Layout(port, world, node), fingerprint, absl::Seconds(20));
      if (!conn.ok()) {
        result = conn.status();
        return;
      }
      result = RunStepFollower(&worker, conn->get());
    });
  }
  ~Follower() {
    if (thread.joinable()) thread.join();
  }
  NodeWorker worker;
  absl::Status result = absl::UnknownError("not finished");
  std::thread thread;
};

// A TCP port that was free on 127.0.0.1 a moment ago (bind port 0, read it back, close).
int FreePort() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  EXPECT_GE(fd, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  EXPECT_EQ(::bind(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)), 0);
  EXPECT_EQ(::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len), 0);
  ::close(fd);
  return ntohs(addr.sin_port);
}

// Prefill (plain and compressed) then decode steps; returns each step's result.
std::vector<BatchResult> RunSteps(Worker* w, int decode_steps) {
  const ModelConfig& c = w->config();
  TestSeq a{0, {}, 0}, b{1, {}, 0};
  std::vector<int32_t> caps(c.num_layers * c.num_kv_heads);
  for (size_t i = 0; i < caps.size(); ++i) caps[i] = 3 + static_cast<int32_t>(i * 7) % 20;
  BatchBuilder first(c);
  first.AddPlain(&a, {1, 403, 407, 261, 378}, true, 0);
  std::vector<TokenId> long_prompt;
  for (int i = 0; i < 60; ++i) long_prompt.push_back(3 + (i * 37) % 500);
  first.AddSelect(&b, long_prompt, caps);
  Batch batch = first.Take();
  std::vector<BatchResult> out;
  for (int step = 0; step <= decode_steps; ++step) {
    auto r = w->Execute(batch);
    EXPECT_TRUE(r.ok()) << r.status();
    if (!r.ok()) break;
    out.push_back(*r);
    BatchBuilder next(c);
    next.AddPlain(&a, {r->seqs[0].token}, true, step + 1);
    next.AddPlain(&b, {r->seqs[1].token}, true, step + 1);
    batch = next.Take();
  }
  return out;
}

TEST(MultiNodeWorkerTest, StepsReachEveryNodeAndKeptCountsMerge) {
  const int port = FreePort();
  Follower f1(port, 3, 1), f2(port, 3, 2);
  auto followers = AcceptFollowers(Layout(port, 3, 0), "stories", absl::Seconds(20));
  ASSERT_TRUE(followers.ok()) << followers.status();
  ASSERT_EQ(followers->size(), 2u);
  EXPECT_EQ((*followers)[0]->peer_node(), 1);
  EXPECT_EQ((*followers)[1]->peer_node(), 2);
  auto leader_local = std::make_unique<NodeWorker>(MakeCpu(), 0, 3);
  NodeWorker* local = leader_local.get();
  std::vector<BatchResult> group_results;
  {
    MultiNodeWorker group(std::move(leader_local), std::move(*followers), absl::Seconds(30));
    EXPECT_TRUE(group.Liveness().ok());
    group_results = RunSteps(&group, 6);
    EXPECT_EQ(local->steps, 7);
  }  // stops the followers
  f1.thread.join();
  f2.thread.join();
  EXPECT_TRUE(f1.result.ok()) << f1.result;
  EXPECT_TRUE(f2.result.ok()) << f2.result;
  EXPECT_EQ(f1.worker.steps, 7);
  EXPECT_EQ(f2.worker.steps, 7);
  auto plain = MakeCpu();
  const std::vector<BatchResult> want = RunSteps(plain.get(), 6);
  ASSERT_EQ(group_results.size(), want.size());
  for (size_t s = 0; s < want.size(); ++s) {
    for (size_t i = 0; i < want[s].seqs.size(); ++i) {
      EXPECT_EQ(group_results[s].seqs[i].token, want[s].seqs[i].token) << "step " << s;
      // Each node reported a third of the rows; merged, they are the whole plan's counts.
      EXPECT_EQ(group_results[s].seqs[i].kept_per_head, want[s].seqs[i].kept_per_head);
    }
  }
  EXPECT_FALSE(want[0].seqs[1].kept_per_head.empty());
}

constexpr char kNode1PortVariable[] = "HKV_TEST_NODE1_PORT";

// Node 1 of WorksAcrossProcesses, in a process of its own: that test runs this binary again
// with only this case, since gRPC's threads do not survive a fork() (the parent may have used
// gRPC in an earlier case) but do survive an exec. Disabled, so that it runs only that way.
TEST(MultiNodeWorkerTest, DISABLED_Node1OfWorksAcrossProcesses) {
  const char* port = std::getenv(kNode1PortVariable);
  if (port == nullptr) GTEST_SKIP() << "runs as WorksAcrossProcesses' node 1 only";
  NodeWorker worker(MakeCpu(), 1, 2);
  auto conn = ConnectToLeader(Layout(std::atoi(port), 2, 1), "stories", absl::Seconds(20));
  ASSERT_TRUE(conn.ok()) << conn.status();
  EXPECT_TRUE(RunStepFollower(&worker, conn->get()).ok());
  EXPECT_EQ(worker.steps, 5);
}

// The same group with node 1 in another process (as two pods would be): steps and kept counts
// cross the process boundary, and node 1 exits cleanly once node 0 stops the group.
TEST(MultiNodeWorkerTest, WorksAcrossProcesses) {
  const int port = FreePort();
  // Everything the child needs is made before fork(): it only calls execve.
  std::vector<std::string> env;
  for (char** e = environ; *e != nullptr; ++e) env.emplace_back(*e);
  env.push_back(absl::StrCat(kNode1PortVariable, "=", port));
  std::vector<char*> envp;
  for (std::string& e : env) envp.push_back(e.data());
  envp.push_back(nullptr);
  std::string self = "/proc/self/exe";
  std::string filter = "--gtest_filter=MultiNodeWorkerTest.DISABLED_Node1OfWorksAcrossProcesses";
  std::string disabled = "--gtest_also_run_disabled_tests";
  char* argv[] = {self.data(), filter.data(), disabled.data(), nullptr};
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    ::execve(self.c_str(), argv, envp.data());
    ::_exit(127);
  }
  auto followers = AcceptFollowers(Layout(port, 2, 0), "stories", absl::Seconds(20));
  ASSERT_TRUE(followers.ok()) << followers.status();
  std::vector<BatchResult> got;
  {
    MultiNodeWorker group(std::make_unique<NodeWorker>(MakeCpu(), 0, 2), std::move(*followers),
                          absl::Seconds(30));
    got = RunSteps(&group, 4);
  }
  int wstatus = 0;
  ASSERT_EQ(::waitpid(child, &wstatus, 0), child);
  ASSERT_TRUE(WIFEXITED(wstatus));
  EXPECT_EQ(WEXITSTATUS(wstatus), 0);
  auto plain = MakeCpu();
  const std::vector<BatchResult> want = RunSteps(plain.get(), 4);
  ASSERT_EQ(got.size(), want.size());
  for (size_t s = 0; s < want.size(); ++s) {
    for (size_t i = 0; i < want[s].seqs.size(); ++i) {
      EXPECT_EQ(got[s].seqs[i].token, want[s].seqs[i].token);
      EXPECT_EQ(got[s].seqs[i].kept_per_head, want[s].seqs[i].kept_per_head);
    }
  }
}

TEST(MultiNodeWorkerTest, StrayConnectionsDoNotBreakJoining) {
  const int port = FreePort();
  absl::StatusOr<std::vector<std::unique_ptr<StepConnection>>> followers =
      absl::UnknownError("not run");
  std::thread leader(
      [&] { followers = AcceptFollowers(Layout(port, 2, 0), "stories", absl::Seconds(20)); });
  // A health probe (connects once node 0 listens, speaks HTTP, hangs up) and a port scan
  // (connects and closes at once).
  for (const char* payload : {"GET /health HTTP/1.0\r\n\r\n", ""}) {
    bool done = false;
    for (int attempt = 0; attempt < 200 && !done; ++attempt) {
      const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
      ASSERT_GE(fd, 0);
      sockaddr_in addr{};
      addr.sin_family = AF_INET;
      addr.sin_port = htons(static_cast<uint16_t>(port));
      addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
      if (::connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) == 0) {
        done = std::strlen(payload) == 0 ||
               ::send(fd, payload, std::strlen(payload), MSG_NOSIGNAL) > 0;
      } else {
        absl::SleepFor(absl::Milliseconds(10));
      }
      ::close(fd);
    }
    EXPECT_TRUE(done);
  }
  Follower f(port, 2, 1);
  leader.join();
  ASSERT_TRUE(followers.ok()) << followers.status();
  ASSERT_EQ(followers->size(), 1u);
  EXPECT_EQ((*followers)[0]->peer_node(), 1);
  followers->clear();  // node 0 goes away: node 1 ends
}

TEST(MultiNodeWorkerTest, FollowerStepFailureFailsThisAndLaterSteps) {
  const int port = FreePort();
  Follower f(port, 2, 1);
  f.worker.fail_at_step = 2;
  auto followers = AcceptFollowers(Layout(port, 2, 0), "stories", absl::Seconds(20));
  ASSERT_TRUE(followers.ok()) << followers.status();
  MultiNodeWorker group(std::make_unique<NodeWorker>(MakeCpu(), 0, 2), std::move(*followers),
                        absl::Seconds(30));
  const ModelConfig& c = group.config();
  TestSeq a{0, {}, 0};
  absl::Status last;
  for (int step = 0; step < 3; ++step) {
    BatchBuilder b(c);
    b.AddPlain(&a, {static_cast<TokenId>(10 + step)}, true, step);
    last = group.Execute(b.Take()).status();
    if (step < 2) ASSERT_TRUE(last.ok()) << last;
  }
  EXPECT_EQ(last.code(), absl::StatusCode::kUnavailable);
  EXPECT_NE(last.message().find("injected"), std::string::npos) << last;
  f.thread.join();
  EXPECT_EQ(f.result.code(), absl::StatusCode::kUnavailable);
  BatchBuilder b(c);
  b.AddPlain(&a, {3}, true, 3);
  EXPECT_EQ(group.Execute(b.Take()).status().code(), absl::StatusCode::kUnavailable);
  EXPECT_FALSE(group.Liveness().ok());
}

TEST(MultiNodeWorkerTest, FollowerThatStallsPastTheStepTimeoutFailsTheStep) {
  const int port = FreePort();
  Follower f(port, 2, 1);
  f.worker.stall = absl::Seconds(3);
  auto followers = AcceptFollowers(Layout(port, 2, 0), "stories", absl::Seconds(20));
  ASSERT_TRUE(followers.ok()) << followers.status();
  MultiNodeWorker group(std::make_unique<NodeWorker>(MakeCpu(), 0, 2), std::move(*followers),
                        absl::Milliseconds(300));
  TestSeq a{0, {}, 0};
  BatchBuilder b(group.config());
  b.AddPlain(&a, {1, 2, 3}, true, 0);
  const absl::Time start = absl::Now();
  const absl::Status s = group.Execute(b.Take()).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable) << s;
  EXPECT_NE(s.message().find("timed out"), std::string::npos) << s;
  EXPECT_LT(absl::Now() - start, absl::Seconds(2));
}

TEST(MultiNodeWorkerTest, FollowerGoneMidStepCancelsTheLocalRanksWait) {
  // Node 0's ranks would wait for the vanished node's collectives until the step timeout (here
  // 60 s); the step watcher sees the closed connection and cancels them at once.
  const int port = FreePort();
  std::thread follower([port] {
    auto conn = ConnectToLeader(Layout(port, 2, 1), "stories", absl::Seconds(20));
    ASSERT_TRUE(conn.ok()) << conn.status();
    ASSERT_TRUE((*conn)->Expect(StepMessage::kStep, absl::Seconds(20)).ok());
    absl::SleepFor(absl::Milliseconds(200));
  });  // exits mid-step without answering
  auto followers = AcceptFollowers(Layout(port, 2, 0), "stories", absl::Seconds(20));
  ASSERT_TRUE(followers.ok()) << followers.status();
  auto local = std::make_unique<NodeWorker>(MakeCpu(), 0, 2);
  local->stall = absl::Seconds(60);
  NodeWorker* ranks = local.get();
  MultiNodeWorker group(std::move(local), std::move(*followers), absl::Seconds(60));
  TestSeq a{0, {}, 0};
  BatchBuilder b(group.config());
  b.AddPlain(&a, {1, 2, 3}, true, 0);
  const absl::Time start = absl::Now();
  const absl::Status s = group.Execute(b.Take()).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable) << s;
  EXPECT_TRUE(ranks->cancelled);
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));
  follower.join();
}

TEST(MultiNodeWorkerTest, LivenessNoticesAFollowerThatWentAway) {
  const int port = FreePort();
  std::thread follower([port] {
    auto conn = ConnectToLeader(Layout(port, 2, 1), "stories", absl::Seconds(20));
    ASSERT_TRUE(conn.ok()) << conn.status();
  });  // the connection closes as the thread ends: the follower "died"
  auto followers = AcceptFollowers(Layout(port, 2, 0), "stories", absl::Seconds(20));
  ASSERT_TRUE(followers.ok()) << followers.status();
  follower.join();
  MultiNodeWorker group(std::make_unique<NodeWorker>(MakeCpu(), 0, 2), std::move(*followers),
                        absl::Seconds(30));
  absl::Status live;
  for (int i = 0; i < 100 && live.ok(); ++i) {
    live = group.Liveness();
    absl::SleepFor(absl::Milliseconds(10));
  }
  EXPECT_EQ(live.code(), absl::StatusCode::kUnavailable) << live;
  TestSeq a{0, {}, 0};
  BatchBuilder b(group.config());
  b.AddPlain(&a, {1}, true, 0);
  EXPECT_EQ(group.Execute(b.Take()).status().code(), absl::StatusCode::kUnavailable);
}

TEST(MultiNodeWorkerTest, FollowerEndsWithUnavailableWhenTheLeaderVanishes) {
  const int port = FreePort();
  Follower f(port, 2, 1);
  {
    auto followers = AcceptFollowers(Layout(port, 2, 0), "stories", absl::Seconds(20));
    ASSERT_TRUE(followers.ok()) << followers.status();
  }  // the leader's connection closes without a stop message
  f.thread.join();
  EXPECT_EQ(f.result.code(), absl::StatusCode::kUnavailable) << f.result;
}

TEST(MultiNodeWorkerTest, JoiningChecksConfigurationAndNamesMissingNodes) {
  {
    const int port = FreePort();
    Follower f(port, 2, 1, "another model");
    auto followers = AcceptFollowers(Layout(port, 2, 0), "stories", absl::Seconds(20));
    EXPECT_EQ(followers.status().code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_NE(followers.status().message().find("another model"), std::string::npos);
    f.thread.join();
    EXPECT_FALSE(f.result.ok());
    EXPECT_NE(f.result.message().find("different configuration"), std::string::npos) << f.result;
  }
  {
    const int port = FreePort();
    Follower f(port, 3, 2);  // node 1 never comes
    auto followers = AcceptFollowers(Layout(port, 3, 0), "stories", absl::Seconds(1));
    EXPECT_EQ(followers.status().code(), absl::StatusCode::kDeadlineExceeded);
    EXPECT_NE(followers.status().message().find("node(s) 1 did not join"), std::string::npos)
        << followers.status();
  }
  {
    const int port = FreePort();
    Follower f(port, 3, 1);  // says the group has 3 nodes; the leader expects 2
    auto followers = AcceptFollowers(Layout(port, 2, 0), "stories", absl::Seconds(20));
    EXPECT_EQ(followers.status().code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_NE(followers.status().message().find("world size 3"), std::string::npos);
  }
}

TEST(MultiNodeWorkerTest, PeerWithWrongTokenIsRefusedAndGroupStillForms) {
  const int port = FreePort();
  DistLayout leader_layout = Layout(port, 2, 0);
  leader_layout.token = "group-secret-1";
  absl::StatusOr<std::vector<std::unique_ptr<StepConnection>>> followers =
      absl::UnknownError("not run");
  std::thread leader(
      [&] { followers = AcceptFollowers(leader_layout, "stories", absl::Seconds(20)); });
  for (const char* token : {"group-secret-2", ""}) {
    DistLayout bad = Layout(port, 2, 1);
    bad.token = token;
    auto conn = ConnectToLeader(bad, "stories", absl::Seconds(20));
    ASSERT_FALSE(conn.ok()) << "token '" << token << "' was admitted";
    EXPECT_EQ(conn.status().code(), absl::StatusCode::kUnauthenticated) << conn.status();
  }
  DistLayout good = Layout(port, 2, 1);
  good.token = "group-secret-1";
  auto conn = ConnectToLeader(good, "stories", absl::Seconds(20));
  ASSERT_TRUE(conn.ok()) << conn.status();
  leader.join();
  ASSERT_TRUE(followers.ok()) << followers.status();
  ASSERT_EQ(followers->size(), 1u);
  EXPECT_EQ((*followers)[0]->peer_node(), 1);
}

}  // namespace
}  // namespace hkv
