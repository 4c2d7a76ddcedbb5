#include "server/plan_cache.h"

#include <thread>
#include <vector>

#include "gtest/gtest.h"

namespace hkv {
namespace {

HeadBudgetPlan PlanWithBudget(int32_t budget) {
  HeadBudgetPlan p;
  p.policy = KvPolicyName::kSnapKv;
  p.budget = budget;
  p.capacity = {budget - 8};
  return p;
}

PlanKey Key(int32_t budget) { return PlanKey{KvPolicyName::kSnapKv, budget, 0}; }

TEST(PlanCacheTest, ReturnsWhatWasInserted) {
  PlanCache cache(4);
  EXPECT_FALSE(cache.Lookup(Key(16)).has_value());
  cache.Insert(Key(16), PlanWithBudget(16));
  auto got = cache.Lookup(Key(16));
  ASSERT_TRUE(got.has_value());
  EXPECT_EQ(got->budget, 16);
  // Keys differ by policy and beta too.
  EXPECT_FALSE(cache.Lookup(PlanKey{KvPolicyName::kPyramidKv, 16, 0}).has_value());
  EXPECT_FALSE(cache.Lookup(PlanKey{KvPolicyName::kSnapKv, 16, 1.5}).has_value());
}

TEST(PlanCacheTest, StaysAtCapacityDroppingTheLeastRecentlyUsed) {
  PlanCache cache(3);
  for (int32_t b : {10, 11, 12}) cache.Insert(Key(b), PlanWithBudget(b));
  ASSERT_TRUE(cache.Lookup(Key(10)).has_value());  // 11 is now the least recently used.
  cache.Insert(Key(13), PlanWithBudget(13));
  EXPECT_EQ(cache.size(), 3u);
  EXPECT_FALSE(cache.Lookup(Key(11)).has_value());
  for (int32_t b : {10, 12, 13}) EXPECT_TRUE(cache.Lookup(Key(b)).has_value()) << b;
  for (int32_t b = 100; b < 10100; ++b) cache.Insert(Key(b), PlanWithBudget(b));
  EXPECT_EQ(cache.size(), 3u);
  EXPECT_EQ(cache.Lookup(Key(10099))->budget, 10099);
}

TEST(PlanCacheTest, ReinsertingAKeyKeepsOneEntry) {
  PlanCache cache(2);
  cache.Insert(Key(10), PlanWithBudget(10));
  cache.Insert(Key(10), PlanWithBudget(10));
  cache.Insert(Key(11), PlanWithBudget(11));
  EXPECT_EQ(cache.size(), 2u);
  EXPECT_TRUE(cache.Lookup(Key(10)).has_value());
  EXPECT_TRUE(cache.Lookup(Key(11)).has_value());
}

TEST(PlanCacheTest, ConcurrentUseStaysBoundedAndConsistent) {
  PlanCache cache(PlanCache::kDefaultCapacity);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&cache, t] {
      for (int32_t i = 0; i < 2000; ++i) {
        const int32_t b = 9 + (i * 7 + t) % 300;
        if (auto p = cache.Lookup(Key(b))) {
          EXPECT_EQ(p->budget, b);
        } else {
          cache.Insert(Key(b), PlanWithBudget(b));
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(cache.size(), PlanCache::kDefaultCapacity);
}

}  // namespace
}  // namespace hkv
