// Guards "one valid request can stall the engine for everyone": a request's stop lists are
// bounded (--max-stop-strings, --max-stop-bytes, --max-stop-token-ids) and refused with
// INVALID_ARGUMENT naming the flag before anything is queued; lists at the limits still stop
// correctly; and an engine step no longer carries a request's stop lists (before, every step
// copied them, and the engine thread rescanned every stop string for every token).

#include <algorithm>
#include <iterator>
#include <set>
#include <string>
#include <vector>

#include "block_manager/kv_cache_manager.h"
#include "executor/step_codec.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "scheduler/scheduler.h"
#include "tests/server_test_util.h"

namespace hkv::testing {
namespace {

using ::testing::ElementsAreArray;
using ::testing::HasSubstr;

class StopStringLimitsTest : public SharedServerTest {};

// `count` distinct stop strings of `bytes` bytes in all (each at least 4), none of which the
// golden stories260K text contains.
std::vector<std::string> Fillers(int count, int bytes) {
  std::vector<std::string> out;
  for (int i = 0; i < count; ++i) {
    std::string s = "Q" + std::to_string(i) + "#";
    const int len = bytes / count + (i < bytes % count ? 1 : 0);
    s.resize(len, 'q');
    out.push_back(s);
  }
  return out;
}

TEST_F(StopStringLimitsTest, OverLimitListsAreRefusedNamingTheFlag) {
  auto stub = server_->NewStub();
  struct Case {
    const char* name;
    hkv::v1::GenerateRequest request;
    const char* flag;
  };
  std::vector<Case> cases;
  auto with_stops = [](const std::vector<std::string>& stops) {
    hkv::v1::GenerateRequest r = GreedyIds({1}, 8);
    for (const std::string& s : stops) r.mutable_sampling()->add_stop(s);
    return r;
  };
  cases.push_back({"65 strings", with_stops(Fillers(65, 65 * 8)), "--max-stop-strings"});
  cases.push_back({"4097 bytes", with_stops(Fillers(2, 4097)), "--max-stop-bytes"});
  cases.push_back({"257 ids", GreedyIds({1}, 8), "--max-stop-token-ids"});
  for (int i = 0; i < 257; ++i) cases.back().request.mutable_sampling()->add_stop_token_ids(3 + i);
  // The issue's shape, scaled to a test: a few hundred thousand short strings (12 MB).
  cases.push_back({"300k strings", GreedyIds({1}, 8), "--max-stop-strings"});
  for (int i = 0; i < 300000; ++i) {
    cases.back().request.mutable_sampling()->add_stop("never appears in a story #" +
                                                      std::to_string(i));
  }
  for (const Case& c : cases) {
    StreamResult r = RunStream(stub.get(), c.request);
    EXPECT_EQ(r.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << c.name;
    EXPECT_THAT(r.status.error_message(), HasSubstr(c.flag)) << c.name;
    EXPECT_TRUE(r.ids.empty()) << c.name;
  }
  // The engine refuses the same on its own (the CLI and other front ends submit there).
  EngineRequest direct;
  direct.prompt = {1};
  direct.sampling.stop = Fillers(65, 65 * 8);
  auto submitted = server_->engine().Submit(direct);
  EXPECT_EQ(submitted.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(submitted.status().message(), HasSubstr("--max-stop-strings"));
  direct.sampling.stop = {"ok", std::string("\xC3\x28", 2)};
  EXPECT_EQ(server_->engine().Submit(direct).status().code(), absl::StatusCode::kInvalidArgument);
  // And it still serves.
  StreamResult ok = RunStream(stub.get(), GreedyIds({1}, 40));
  ASSERT_TRUE(ok.status.ok()) << ok.status.error_message();
  EXPECT_THAT(ok.ids, ElementsAreArray(kGoldenIds));
}

TEST_F(StopStringLimitsTest, ListsAtTheLimitsWorkAndStillStop) {
  auto stub = server_->NewStub();
  // 64 strings, 4096 bytes in all; one of them ends the golden text.
  hkv::v1::GenerateRequest strings = GreedyIds({1}, 40);
  std::vector<std::string> stop = Fillers(63, 4096 - 11);
  stop.insert(stop.begin() + 40, "little girl");
  size_t total = 0;
  for (const std::string& s : stop) {
    total += s.size();
    strings.mutable_sampling()->add_stop(s);
  }
  ASSERT_EQ(stop.size(), 64u);
  ASSERT_EQ(total, 4096u);
  StreamResult r = RunStream(stub.get(), strings);
  ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  EXPECT_EQ(r.finish, hkv::v1::FINISH_REASON_STOP);
  EXPECT_EQ(r.text, "Once upon a time, there was a ");
  // 256 stop ids; the only one the golden output holds is its 11th token.
  hkv::v1::GenerateRequest ids = GreedyIds({1}, 40);
  const std::set<int32_t> golden(std::begin(kGoldenIds), std::end(kGoldenIds));
  ASSERT_EQ(std::count(std::begin(kGoldenIds), std::begin(kGoldenIds) + 11, kGoldenIds[10]), 1);
  ids.mutable_sampling()->add_stop_token_ids(kGoldenIds[10]);
  for (int32_t id = 3; ids.sampling().stop_token_ids_size() < 256; ++id) {
    if (!golden.contains(id)) ids.mutable_sampling()->add_stop_token_ids(id);
  }
  r = RunStream(stub.get(), ids);
  ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  EXPECT_EQ(r.finish, hkv::v1::FINISH_REASON_STOP);
  EXPECT_THAT(r.ids, ElementsAreArray(kGoldenIds, 11));
}

// The first step of a request with the largest stop lists allowed, as a multi-node leader
// would send it, next to the same request without them.
size_t FirstStepBytes(bool with_stop_lists) {
  KvCacheManager kv({/*num_blocks=*/64, /*block_size=*/16, /*num_layers=*/2, /*num_kv_heads=*/2});
  Scheduler scheduler(SchedulerOptions{}, &kv);
  auto r = std::make_unique<Request>();
  r->id = 1;
  r->prompt = {1, 5, 9};
  r->sampling.max_tokens = 4;
  if (with_stop_lists) {
    r->sampling.stop = Fillers(64, 4096);
    for (int i = 0; i < 256; ++i) r->sampling.stop_token_ids.push_back(3 + i);
  }
  r->arrival_time = absl::Now();
  EXPECT_TRUE(scheduler.Add(std::move(r)).ok());
  std::optional<Batch> batch = scheduler.Schedule(absl::Now());
  EXPECT_TRUE(batch.has_value());
  if (!batch.has_value()) return 0;
  auto bytes = EncodeBatch(*batch);
  EXPECT_TRUE(bytes.ok()) << bytes.status();
  return bytes.ok() ? bytes->size() : 0;
}

TEST(StopStringStepTest, StepsDoNotCarryStopLists) {
  const size_t plain = FirstStepBytes(false);
  ASSERT_GT(plain, 0u);
  EXPECT_EQ(FirstStepBytes(true), plain) << "a step's size depends on the request's stop lists";
}

}  // namespace
}  // namespace hkv::testing
