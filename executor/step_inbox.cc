#include "executor/step_inbox.h"

#include <utility>

#include "absl/strings/str_cat.h"

namespace hkv {

void StepInbox::Push(StepInboxMessage message) {
  absl::MutexLock lock(&mu_);
  if (closed_.ok()) queue_.push_back(std::move(message));
}

void StepInbox::Close(absl::Status why) {
  if (why.ok()) why = absl::UnavailableError("the connection closed");
  absl::MutexLock lock(&mu_);
  if (closed_.ok()) closed_ = std::move(why);
}

absl::StatusOr<StepInboxMessage> StepInbox::Pop(absl::Duration timeout, const std::string& what) {
  absl::MutexLock lock(&mu_);
  if (!mu_.AwaitWithTimeout(absl::Condition(this, &StepInbox::Ready), timeout)) {
    return absl::DeadlineExceededError(
        absl::StrCat("timed out ", what, " (", absl::FormatDuration(timeout), ")"));
  }
  if (queue_.empty()) return closed_;
  StepInboxMessage m = std::move(queue_.front());
  queue_.pop_front();
  return m;
}

bool StepInbox::Ready() const { return !queue_.empty() || !closed_.ok(); }

bool StepInbox::closed() const {
  absl::MutexLock lock(&mu_);
  return !closed_.ok();
}

}  // namespace hkv
