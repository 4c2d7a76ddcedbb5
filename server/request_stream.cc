#include "server/request_stream.h"

namespace hkv {

void RequestStream::Push(StreamChunk chunk) {
  absl::MutexLock lock(&mu_);
  if (closed_) return;
  if (chunk.finished) ++samples_finished_;
  closed_ = samples_finished_ >= num_samples_ ||
            (chunk.finished && chunk.finish == FinishReason::kError && !chunk.status.ok());
  chunk.last = closed_;
  chunks_.push_back(std::move(chunk));
  if (notify_) notify_();
}

std::optional<StreamChunk> RequestStream::Next(absl::Duration timeout) {
  absl::MutexLock lock(&mu_);
  auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return !chunks_.empty(); };
  if (!mu_.AwaitWithTimeout(absl::Condition(&ready), timeout)) return std::nullopt;
  StreamChunk chunk = std::move(chunks_.front());
  chunks_.pop_front();
  return chunk;
}

void RequestStream::SetNotify(std::function<void()> notify) {
  absl::MutexLock lock(&mu_);
  notify_ = std::move(notify);
  if (notify_ && !chunks_.empty()) notify_();
}

bool RequestStream::finished() const {
  absl::MutexLock lock(&mu_);
  return closed_;
}

}  // namespace hkv
