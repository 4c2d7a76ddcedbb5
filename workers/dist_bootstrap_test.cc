// Multi-node bootstrap: the rank layout from flags and LeaderWorkerSet's environment, and the TCP
// rendezvous on 127.0.0.1 with ranks as threads and as separate processes.

#include "workers/dist_bootstrap.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <map>
#include <string>
#include <thread>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace hkv {
namespace {

using ::testing::HasSubstr;

using EnvMap = std::map<std::string, std::string>;

// A getenv over `env` (which must outlive the calls).
std::function<const char*(const char*)> FakeEnv(const EnvMap* env) {
  return [env](const char* name) -> const char* {
    auto it = env->find(name);
    return it == env->end() ? nullptr : it->second.c_str();
  };
}

const EnvMap kNoEnv;

// ---------------------------------------------------------------------------------------------
// ResolveDistLayout

TEST(ResolveDistLayoutTest, SingleNodeNeedsNothing) {
  auto layout = ResolveDistLayout("", 0, -1, FakeEnv(&kNoEnv));
  ASSERT_TRUE(layout.ok()) << layout.status();
  EXPECT_EQ(layout->world_size, 1);
  EXPECT_EQ(layout->rank, 0);
  EXPECT_EQ(layout->leader_host, "");
}

TEST(ResolveDistLayoutTest, FromFlags) {
  auto layout = ResolveDistLayout("10.0.0.7:1234", 4, 2, FakeEnv(&kNoEnv));
  ASSERT_TRUE(layout.ok()) << layout.status();
  EXPECT_EQ(layout->leader_host, "10.0.0.7");
  EXPECT_EQ(layout->port, 1234);
  EXPECT_EQ(layout->world_size, 4);
  EXPECT_EQ(layout->rank, 2);
}

TEST(ResolveDistLayoutTest, DefaultPort) {
  auto layout = ResolveDistLayout("leader.svc", 2, 1, FakeEnv(&kNoEnv));
  ASSERT_TRUE(layout.ok()) << layout.status();
  EXPECT_EQ(layout->leader_host, "leader.svc");
  EXPECT_EQ(layout->port, 29500);
  layout = ResolveDistLayout("leader.svc", 2, 1, FakeEnv(&kNoEnv), 4242);
  ASSERT_TRUE(layout.ok()) << layout.status();
  EXPECT_EQ(layout->port, 4242);
}

TEST(ResolveDistLayoutTest, FromLeaderWorkerSetEnv) {
  const EnvMap env = {{"LWS_LEADER_ADDRESS", "hkv-0.hkv.default"},
                      {"LWS_GROUP_SIZE", "4"},
                      {"LWS_WORKER_INDEX", "3"}};
  auto layout = ResolveDistLayout("", 0, -1, FakeEnv(&env));
  ASSERT_TRUE(layout.ok()) << layout.status();
  EXPECT_EQ(layout->leader_host, "hkv-0.hkv.default");
  EXPECT_EQ(layout->port, 29500);
  EXPECT_EQ(layout->world_size, 4);
  EXPECT_EQ(layout->rank, 3);

  const EnvMap with_port = {{"LWS_LEADER_ADDRESS", "hkv-0:7000"}, {"LWS_GROUP_SIZE", "2"}};
  layout = ResolveDistLayout("", 0, -1, FakeEnv(&with_port));
  ASSERT_TRUE(layout.ok()) << layout.status();
  EXPECT_EQ(layout->leader_host, "hkv-0");
  EXPECT_EQ(layout->port, 7000);
  EXPECT_EQ(layout->rank, 0);  // the leader pod has no LWS_WORKER_INDEX here: defaults to 0.
}

TEST(ResolveDistLayoutTest, FlagsWinOverEnv) {
  const EnvMap env = {
      {"LWS_LEADER_ADDRESS", "env-host:1111"}, {"LWS_GROUP_SIZE", "8"}, {"LWS_WORKER_INDEX", "5"}};
  auto layout = ResolveDistLayout("flag-host:2222", 2, 0, FakeEnv(&env));
  ASSERT_TRUE(layout.ok()) << layout.status();
  EXPECT_EQ(layout->leader_host, "flag-host");
  EXPECT_EQ(layout->port, 2222);
  EXPECT_EQ(layout->world_size, 2);
  EXPECT_EQ(layout->rank, 0);  // --rank=0 is set, not "unset".

  // Each field falls back on its own.
  layout = ResolveDistLayout("", 0, 1, FakeEnv(&env));
  ASSERT_TRUE(layout.ok()) << layout.status();
  EXPECT_EQ(layout->leader_host, "env-host");
  EXPECT_EQ(layout->world_size, 8);
  EXPECT_EQ(layout->rank, 1);
}

TEST(ResolveDistLayoutTest, Ipv6Addresses) {
  auto layout = ResolveDistLayout("[::1]:4000", 2, 1, FakeEnv(&kNoEnv));
  ASSERT_TRUE(layout.ok()) << layout.status();
  EXPECT_EQ(layout->leader_host, "::1");
  EXPECT_EQ(layout->port, 4000);
  layout = ResolveDistLayout("[fe80::2]", 2, 1, FakeEnv(&kNoEnv));
  ASSERT_TRUE(layout.ok()) << layout.status();
  EXPECT_EQ(layout->leader_host, "fe80::2");
  EXPECT_EQ(layout->port, 29500);
  layout = ResolveDistLayout("fd00::5", 2, 1, FakeEnv(&kNoEnv));
  ASSERT_TRUE(layout.ok()) << layout.status();
  EXPECT_EQ(layout->leader_host, "fd00::5");
  EXPECT_EQ(layout->port, 29500);
}

void ExpectInvalid(const absl::StatusOr<DistLayout>& layout, const std::string& needle) {
  ASSERT_FALSE(layout.ok());
  EXPECT_EQ(layout.status().code(), absl::StatusCode::kInvalidArgument) << layout.status();
  EXPECT_THAT(std::string(layout.status().message()), HasSubstr(needle));
}

TEST(ResolveDistLayoutTest, Errors) {
  ExpectInvalid(ResolveDistLayout("h", -5, 0, FakeEnv(&kNoEnv)), "--world_size");
  ExpectInvalid(ResolveDistLayout("h", 4, 4, FakeEnv(&kNoEnv)), "--rank");
  ExpectInvalid(ResolveDistLayout("h", 4, -2, FakeEnv(&kNoEnv)), "--rank");
  ExpectInvalid(ResolveDistLayout("", 2, 0, FakeEnv(&kNoEnv)), "LWS_LEADER_ADDRESS");
  ExpectInvalid(ResolveDistLayout("", 2, 0, FakeEnv(&kNoEnv)), "--dist_addr");
  ExpectInvalid(ResolveDistLayout("h:0", 2, 0, FakeEnv(&kNoEnv)), "1..65535");
  ExpectInvalid(ResolveDistLayout("h:70000", 2, 0, FakeEnv(&kNoEnv)), "1..65535");
  ExpectInvalid(ResolveDistLayout("h:http", 2, 0, FakeEnv(&kNoEnv)), "not a number");
  ExpectInvalid(ResolveDistLayout("h:", 2, 0, FakeEnv(&kNoEnv)), "--dist_addr");
  ExpectInvalid(ResolveDistLayout(":29500", 2, 0, FakeEnv(&kNoEnv)), "empty host");
  ExpectInvalid(ResolveDistLayout("[::1:29500", 2, 0, FakeEnv(&kNoEnv)), "']'");
  ExpectInvalid(ResolveDistLayout("h", 2, 0, FakeEnv(&kNoEnv), 0), "1..65535");

  const EnvMap bad_size = {{"LWS_LEADER_ADDRESS", "h"}, {"LWS_GROUP_SIZE", "four"}};
  ExpectInvalid(ResolveDistLayout("", 0, -1, FakeEnv(&bad_size)), "LWS_GROUP_SIZE");
  const EnvMap zero_size = {{"LWS_GROUP_SIZE", "0"}};
  ExpectInvalid(ResolveDistLayout("", 0, -1, FakeEnv(&zero_size)), "LWS_GROUP_SIZE");
  const EnvMap bad_index = {
      {"LWS_LEADER_ADDRESS", "h"}, {"LWS_GROUP_SIZE", "2"}, {"LWS_WORKER_INDEX", "x1"}};
  ExpectInvalid(ResolveDistLayout("", 0, -1, FakeEnv(&bad_index)), "LWS_WORKER_INDEX");
  const EnvMap big_index = {
      {"LWS_LEADER_ADDRESS", "h"}, {"LWS_GROUP_SIZE", "2"}, {"LWS_WORKER_INDEX", "2"}};
  ExpectInvalid(ResolveDistLayout("", 0, -1, FakeEnv(&big_index)), "LWS_WORKER_INDEX");
  const EnvMap bad_port = {{"LWS_LEADER_ADDRESS", "h:99999"}, {"LWS_GROUP_SIZE", "2"}};
  ExpectInvalid(ResolveDistLayout("", 0, -1, FakeEnv(&bad_port)), "LWS_LEADER_ADDRESS");
}

// ---------------------------------------------------------------------------------------------
// TcpRendezvous

std::vector<uint8_t> TestBlob() {
  std::vector<uint8_t> blob(128);
  for (size_t i = 0; i < blob.size(); ++i) blob[i] = static_cast<uint8_t>(i * 37 + 11);
  return blob;
}

DistLayout Local(int port, int32_t world_size, int32_t rank) {
  return DistLayout{"127.0.0.1", port, world_size, rank};
}

int FreePort() {
  auto port = TcpRendezvous::PickFreePort();
  EXPECT_TRUE(port.ok()) << port.status();
  return port.ok() ? *port : 0;
}

// Runs each layout's Exchange on its own thread, starting the layouts in `delayed` after `delay`.
// `timeouts`, when given, overrides `timeout` per layout.
std::vector<absl::StatusOr<std::vector<uint8_t>>> RunGroup(
    const std::vector<DistLayout>& layouts, absl::Duration timeout,
    const std::vector<size_t>& delayed = {}, absl::Duration delay = absl::ZeroDuration(),
    const std::vector<absl::Duration>& timeouts = {}) {
  std::vector<absl::StatusOr<std::vector<uint8_t>>> results(layouts.size(),
                                                            absl::UnknownError("not run"));
  std::vector<std::thread> threads;
  for (size_t i = 0; i < layouts.size(); ++i) {
    const bool late = std::find(delayed.begin(), delayed.end(), i) != delayed.end();
    threads.emplace_back([&, i, late] {
      if (late) absl::SleepFor(delay);
      const std::vector<uint8_t> blob = layouts[i].rank == 0 ? TestBlob() : std::vector<uint8_t>();
      results[i] =
          TcpRendezvous::Exchange(layouts[i], blob, i < timeouts.size() ? timeouts[i] : timeout);
    });
  }
  for (auto& t : threads) t.join();
  return results;
}

TEST(TcpRendezvousTest, SingleRankNeedsNoNetwork) {
  auto blob = TcpRendezvous::Exchange(DistLayout{}, TestBlob(), absl::Milliseconds(10));
  ASSERT_TRUE(blob.ok()) << blob.status();
  EXPECT_EQ(*blob, TestBlob());
}

TEST(TcpRendezvousTest, RejectsBadLayouts) {
  EXPECT_EQ(TcpRendezvous::Exchange(Local(0, 2, 0), TestBlob(), absl::Seconds(1)).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(TcpRendezvous::Exchange(Local(1234, 2, 2), {}, absl::Seconds(1)).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(
      TcpRendezvous::Exchange(DistLayout{"", 1234, 2, 1}, {}, absl::Seconds(1)).status().code(),
      absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(TcpRendezvous::Exchange(Local(1234, 2, 0),
                                    std::vector<uint8_t>(TcpRendezvous::kMaxBlobBytes + 1),
                                    absl::Seconds(1))
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(TcpRendezvousTest, FourRanksGetTheSameBlob) {
  const int port = FreePort();
  std::vector<DistLayout> layouts;
  for (int32_t r = 0; r < 4; ++r) layouts.push_back(Local(port, 4, r));
  auto results = RunGroup(layouts, absl::Seconds(5));
  for (int32_t r = 0; r < 4; ++r) {
    ASSERT_TRUE(results[r].ok()) << "rank " << r << ": " << results[r].status();
    EXPECT_EQ(*results[r], TestBlob()) << "rank " << r;
  }
}

TEST(TcpRendezvousTest, Rank0StartingLateIsRetried) {
  const int port = FreePort();
  const std::vector<DistLayout> layouts = {Local(port, 3, 0), Local(port, 3, 1), Local(port, 3, 2)};
  auto results = RunGroup(layouts, absl::Seconds(5), /*delayed=*/{0}, absl::Milliseconds(300));
  for (int32_t r = 0; r < 3; ++r) {
    ASSERT_TRUE(results[r].ok()) << "rank " << r << ": " << results[r].status();
    EXPECT_EQ(*results[r], TestBlob()) << "rank " << r;
  }
}

TEST(TcpRendezvousTest, MissingRankTimesOut) {
  const int port = FreePort();
  const absl::Time start = absl::Now();
  // Rank 1 would wait longer than rank 0, so rank 0 gives up first and tells rank 1 why.
  auto results = RunGroup({Local(port, 3, 0), Local(port, 3, 1)}, absl::Milliseconds(500), {},
                          absl::ZeroDuration(), {absl::Milliseconds(500), absl::Seconds(5)});
  const absl::Duration elapsed = absl::Now() - start;
  ASSERT_FALSE(results[0].ok());
  EXPECT_EQ(results[0].status().code(), absl::StatusCode::kDeadlineExceeded) << results[0].status();
  EXPECT_THAT(std::string(results[0].status().message()), HasSubstr("rank(s) 2 of world size 3"));
  ASSERT_FALSE(results[1].ok());
  EXPECT_EQ(results[1].status().code(), absl::StatusCode::kFailedPrecondition)
      << results[1].status();
  EXPECT_THAT(std::string(results[1].status().message()), HasSubstr("never joined"));
  EXPECT_GE(elapsed, absl::Milliseconds(450));
  EXPECT_LT(elapsed, absl::Milliseconds(1500));
}

TEST(TcpRendezvousTest, MissingRank0TimesOut) {
  const int port = FreePort();
  const absl::Time start = absl::Now();
  auto blob = TcpRendezvous::Exchange(Local(port, 2, 1), {}, absl::Milliseconds(300));
  const absl::Duration elapsed = absl::Now() - start;
  ASSERT_FALSE(blob.ok());
  EXPECT_EQ(blob.status().code(), absl::StatusCode::kDeadlineExceeded) << blob.status();
  EXPECT_THAT(std::string(blob.status().message()), HasSubstr(absl::StrCat("127.0.0.1:", port)));
  EXPECT_LT(elapsed, absl::Milliseconds(1000));
}

TEST(TcpRendezvousTest, WrongWorldSizeFailsEveryone) {
  const int port = FreePort();
  auto results = RunGroup({Local(port, 2, 0), Local(port, 3, 1)}, absl::Seconds(5));
  ASSERT_FALSE(results[0].ok());
  EXPECT_EQ(results[0].status().code(), absl::StatusCode::kFailedPrecondition)
      << results[0].status();
  EXPECT_THAT(std::string(results[0].status().message()), HasSubstr("world size 3"));
  ASSERT_FALSE(results[1].ok());
  EXPECT_EQ(results[1].status().code(), absl::StatusCode::kFailedPrecondition)
      << results[1].status();
  EXPECT_THAT(std::string(results[1].status().message()), HasSubstr("world size"));
}

TEST(TcpRendezvousTest, DuplicateRankFailsEveryone) {
  const int port = FreePort();
  auto results =
      RunGroup({Local(port, 3, 0), Local(port, 3, 1), Local(port, 3, 1)}, absl::Seconds(5));
  ASSERT_FALSE(results[0].ok());
  EXPECT_EQ(results[0].status().code(), absl::StatusCode::kFailedPrecondition)
      << results[0].status();
  EXPECT_THAT(std::string(results[0].status().message()), HasSubstr("two peers claim rank 1"));
  for (int i : {1, 2}) {
    ASSERT_FALSE(results[i].ok());
    EXPECT_EQ(results[i].status().code(), absl::StatusCode::kFailedPrecondition)
        << results[i].status();
  }
}

TEST(TcpRendezvousTest, StrayConnectionsAreIgnored) {
  const int port = FreePort();
  absl::StatusOr<std::vector<uint8_t>> leader = absl::UnknownError("not run");
  std::thread rank0(
      [&] { leader = TcpRendezvous::Exchange(Local(port, 2, 0), TestBlob(), absl::Seconds(5)); });
  // A health probe: connects (once rank 0 listens), sends something else, hangs up.
  bool probed = false;
  for (int attempt = 0; attempt < 100 && !probed; ++attempt) {
    const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    ASSERT_GE(fd, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<uint16_t>(port));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) == 0) {
      const char probe[] = "GET /health HTTP/1.0\r\n\r\n";
      probed = ::send(fd, probe, sizeof(probe) - 1, MSG_NOSIGNAL) > 0;
    } else {
      absl::SleepFor(absl::Milliseconds(10));
    }
    ::close(fd);
  }
  EXPECT_TRUE(probed);
  auto follower = TcpRendezvous::Exchange(Local(port, 2, 1), {}, absl::Seconds(5));
  rank0.join();
  ASSERT_TRUE(leader.ok()) << leader.status();
  ASSERT_TRUE(follower.ok()) << follower.status();
  EXPECT_EQ(*follower, TestBlob());
}

TEST(TcpRendezvousTest, WorksAcrossProcesses) {
  const int port = FreePort();
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    auto blob = TcpRendezvous::Exchange(Local(port, 2, 1), {}, absl::Seconds(5));
    ::_exit(blob.ok() && *blob == TestBlob() ? 0 : 1);
  }
  auto blob = TcpRendezvous::Exchange(Local(port, 2, 0), TestBlob(), absl::Seconds(5));
  int wstatus = 0;
  ASSERT_EQ(::waitpid(child, &wstatus, 0), child);
  ASSERT_TRUE(blob.ok()) << blob.status();
  EXPECT_EQ(*blob, TestBlob());
  ASSERT_TRUE(WIFEXITED(wstatus));
  EXPECT_EQ(WEXITSTATUS(wstatus), 0);
}

}  // namespace
}  // namespace hkv
