// StepInbox: messages come out in order, those that arrived before the reader closed the inbox
// still come out first, and a wait ends at its timeout or when another thread closes the inbox.

#include "executor/step_inbox.h"

#include <thread>

#include "gtest/gtest.h"

namespace hkv {
namespace {

TEST(StepInboxTest, DeliversInOrderThenTheCloseStatus) {
  StepInbox inbox;
  inbox.Push({6, "first"});
  inbox.Push({7, "second"});
  inbox.Close(absl::UnavailableError("node 1 closed its connection"));
  inbox.Push({8, "after close"});  // dropped
  EXPECT_TRUE(inbox.closed());
  absl::StatusOr<StepInboxMessage> a = inbox.Pop(absl::Seconds(1), "waiting");
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->type, 6u);
  EXPECT_EQ(a->payload, "first");
  absl::StatusOr<StepInboxMessage> b = inbox.Pop(absl::Seconds(1), "waiting");
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ(b->payload, "second");
  for (int i = 0; i < 2; ++i) {
    absl::StatusOr<StepInboxMessage> c = inbox.Pop(absl::Seconds(1), "waiting");
    EXPECT_EQ(c.status().code(), absl::StatusCode::kUnavailable);
    EXPECT_EQ(c.status().message(), "node 1 closed its connection");
  }
}

TEST(StepInboxTest, AnOkCloseStillReadsAsUnavailable) {
  StepInbox inbox;
  inbox.Close(absl::OkStatus());
  EXPECT_EQ(inbox.Pop(absl::Seconds(1), "waiting").status().code(), absl::StatusCode::kUnavailable);
}

TEST(StepInboxTest, AnEmptyOpenInboxTimesOut) {
  StepInbox inbox;
  absl::StatusOr<StepInboxMessage> m = inbox.Pop(absl::Milliseconds(20), "waiting for a step");
  EXPECT_EQ(m.status().code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_NE(m.status().message().find("timed out waiting for a step"), std::string::npos);
  EXPECT_FALSE(inbox.closed());
}

TEST(StepInboxTest, CloseFromAnotherThreadEndsAWaitWithoutTimeout) {
  StepInbox inbox;
  std::thread reader([&] { inbox.Close(absl::CancelledError("call cancelled")); });
  absl::StatusOr<StepInboxMessage> m = inbox.Pop(absl::InfiniteDuration(), "waiting");
  reader.join();
  EXPECT_EQ(m.status().code(), absl::StatusCode::kCancelled);
}

}  // namespace
}  // namespace hkv
