#include "server/stream_pusher.h"

namespace hkv {

StreamPusher::StreamPusher() : thread_([this] { Run(); }) {}

StreamPusher::~StreamPusher() {
  Drain();
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  thread_.join();
}

void StreamPusher::Add(std::shared_ptr<RequestStream> stream, StreamChunk chunk) {
  pending_.emplace_back(std::move(stream), std::move(chunk));
}

void StreamPusher::Flush() {
  if (pending_.empty()) return;
  absl::MutexLock lock(&mu_);
  batches_.push_back(std::move(pending_));
  ++unpushed_;
  pending_ = Batch();
}

void StreamPusher::Drain() {
  Flush();
  absl::MutexLock lock(&mu_);
  auto done = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return unpushed_ == 0; };
  mu_.Await(absl::Condition(&done));
}

void StreamPusher::Run() {
  while (true) {
    Batch batch;
    {
      absl::MutexLock lock(&mu_);
      auto ready = [this]()
                       ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stop_ || !batches_.empty(); };
      mu_.Await(absl::Condition(&ready));
      if (batches_.empty()) return;  // stop_, and nothing left
      batch = std::move(batches_.front());
      batches_.pop_front();
    }
    for (auto& [stream, chunk] : batch) stream->Push(std::move(chunk));
    absl::MutexLock lock(&mu_);
    --unpushed_;
  }
}

}  // namespace hkv
