// Multi-node layout: where this node sits, from flags and LeaderWorkerSet's environment.

#include "executor/dist_bootstrap.h"

#include <map>
#include <string>

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

}  // namespace
}  // namespace hkv
