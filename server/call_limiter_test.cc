#include "server/call_limiter.h"

#include <atomic>
#include <thread>
#include <vector>

#include "gtest/gtest.h"

namespace hkv {
namespace {

TEST(CallLimiterTest, RefusesPastTheLimitAndSlotsGiveTheirPlaceBack) {
  CallLimiter limiter(2);
  std::optional<CallLimiter::Slot> a = limiter.TryAcquire();
  std::optional<CallLimiter::Slot> b = limiter.TryAcquire();
  ASSERT_TRUE(a.has_value() && b.has_value());
  EXPECT_FALSE(limiter.TryAcquire().has_value());
  EXPECT_EQ(limiter.in_flight(), 2);
  a.reset();
  EXPECT_EQ(limiter.in_flight(), 1);
  std::optional<CallLimiter::Slot> c = limiter.TryAcquire();
  EXPECT_TRUE(c.has_value());
  EXPECT_FALSE(limiter.TryAcquire().has_value());
}

TEST(CallLimiterTest, ExactUnderContention) {
  constexpr int kLimit = 5;
  CallLimiter limiter(kLimit);
  std::atomic<int> held{0}, most{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 20000; ++i) {
        std::optional<CallLimiter::Slot> slot = limiter.TryAcquire();
        if (!slot.has_value()) continue;
        const int now = held.fetch_add(1) + 1;
        int seen = most.load();
        while (now > seen && !most.compare_exchange_weak(seen, now)) {
        }
        held.fetch_sub(1);
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_LE(most.load(), kLimit);
  EXPECT_EQ(limiter.in_flight(), 0);
}

}  // namespace
}  // namespace hkv
