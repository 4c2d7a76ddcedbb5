// Regression: the engine's plan cache kept every (policy, budget, beta) a client ever sent
// (+10 MiB after 40k distinct budgets). It is now a small LRU (server/plan_cache.h).

#include <string>

#include "gtest/gtest.h"
#include "server/plan_cache.h"
#include "tests/server_test_util.h"

namespace hkv::testing {
namespace {

TEST(PlanCacheBoundsTest, ManyDistinctPlansKeepTheCacheAtItsBound) {
  TestServer server(TestServerConfig());
  Engine& engine = server.engine();
  const int32_t context = engine.model_config().max_seq_len;
  int planned = 0;
  for (const char* policy : {"snapkv", "pyramidkv", "adakv"}) {
    for (int32_t budget = 9; budget <= context; ++budget) {
      auto plan = engine.PlanFor(policy, budget, 0);
      ASSERT_TRUE(plan.ok()) << policy << " B=" << budget << ": " << plan.status();
      ASSERT_EQ(plan->budget, budget);
      ++planned;
    }
  }
  // headkv also keys on beta, which a client may vary without end.
  for (int i = 1; i <= 2000; ++i) {
    auto plan = engine.PlanFor("headkv", 64, 1.0 + i * 1e-4);
    ASSERT_TRUE(plan.ok()) << plan.status();
    ++planned;
  }
  EXPECT_GT(planned, 3000);
  EXPECT_LE(engine.plan_cache_size(), PlanCache::kDefaultCapacity);
  // Evicted plans are planned again, the same as before.
  auto again = engine.PlanFor("snapkv", 9, 0);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->capacity, std::vector<int32_t>(again->capacity.size(), 1));
  // Requests with many distinct budgets still run, and the cache stays bounded.
  auto stub = server.NewStub();
  for (int32_t budget = 9; budget < 9 + 80; ++budget) {
    hkv::v1::GenerateRequest r = GreedyIds({1, 403, 407, 261, 378, 432, 383, 286, 261, 376}, 1);
    r.mutable_kv_policy()->set_name("snapkv");
    r.mutable_kv_policy()->set_budget(budget);
    StreamResult s = RunStream(stub.get(), r);
    ASSERT_TRUE(s.status.ok()) << "B=" << budget << ": " << s.status.error_message();
  }
  EXPECT_LE(engine.plan_cache_size(), PlanCache::kDefaultCapacity);
}

}  // namespace
}  // namespace hkv::testing
