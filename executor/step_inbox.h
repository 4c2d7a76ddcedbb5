#pragma once
// StepInbox: the messages one step connection has received and not yet consumed, filled by the
// connection's reader (a gRPC handler thread on node 0, a reader thread on a follower) and
// drained by its owner. The reader closes it when a read fails (the peer went away, the call was
// cancelled, keepalive gave up): that failed read is how a lost peer is noticed, and messages
// that arrived before it are still delivered first.
//
// Thread-safe: one producer and any number of consumers.

#include <cstdint>
#include <deque>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace hkv {

struct StepInboxMessage {
  uint32_t type = 0;
  std::string payload;
};

class StepInbox {
 public:
  // Queues one message (ignored once closed).
  void Push(StepInboxMessage message);
  // Marks the end of input; `why` (not OK) is what Pop returns once the queue is empty.
  void Close(absl::Status why);
  // The oldest message; the close status once closed and empty; DEADLINE_EXCEEDED after
  // `timeout` (absl::InfiniteDuration() waits for ever).
  absl::StatusOr<StepInboxMessage> Pop(absl::Duration timeout, const std::string& what);
  // True once the reader has closed the inbox (messages may still be queued).
  bool closed() const;

 private:
  bool Ready() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  mutable absl::Mutex mu_;
  std::deque<StepInboxMessage> queue_ ABSL_GUARDED_BY(mu_);
  absl::Status closed_ ABSL_GUARDED_BY(mu_);  // OK while open
};

}  // namespace hkv
