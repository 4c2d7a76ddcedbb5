#pragma once
// StreamingHttpServer's hand-off between threads: the Mailbox through which handler threads
// return replies and reply sources wake the server thread, and the HandlerPool that runs the
// route handler. Shared by the server's source files only.
//
// Threading: both are thread-safe; the server thread owns the pool.

#include <sys/eventfd.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <deque>
#include <memory>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "server/streaming_http_server.h"
#include "server/tcp_socket.h"

namespace hkv {

// Replies handed back by the handler threads and wake-ups from reply sources, for the server
// thread; an eventfd wakes its poll. Thread-safe.
struct StreamingHttpServer::Mailbox {
  absl::Mutex mu;
  std::vector<uint64_t> ready ABSL_GUARDED_BY(mu);
  std::vector<std::pair<uint64_t, HttpReply>> replies ABSL_GUARDED_BY(mu);
  bool signaled ABSL_GUARDED_BY(mu) = false;
  tcp::Fd event{::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)};

  void Signal() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    if (signaled) return;
    signaled = true;
    const uint64_t one = 1;
    [[maybe_unused]] ssize_t n = ::write(event.get(), &one, sizeof(one));
  }
  void Wake(uint64_t serial) {
    absl::MutexLock lock(&mu);
    ready.push_back(serial);
    Signal();
  }
  void Post(uint64_t serial, HttpReply reply) {
    absl::MutexLock lock(&mu);
    replies.emplace_back(serial, std::move(reply));
    Signal();
  }
  void Take(std::vector<uint64_t>* r, std::vector<std::pair<uint64_t, HttpReply>>* p) {
    absl::MutexLock lock(&mu);
    uint64_t count;
    [[maybe_unused]] ssize_t n = ::read(event.get(), &count, sizeof(count));
    signaled = false;
    r->swap(ready);
    p->swap(replies);
  }
};

// A fixed set of threads running the route handler over a bounded queue of requests.
class StreamingHttpServer::HandlerPool {
 public:
  HandlerPool(const HttpRouteHandler* handler, std::shared_ptr<Mailbox> mailbox, int threads,
              int max_pending, std::atomic<int64_t>* request_bytes)
      : handler_(handler),
        mailbox_(std::move(mailbox)),
        max_pending_(max_pending),
        request_bytes_(request_bytes) {
    for (int i = 0; i < threads; ++i) threads_.emplace_back([this] { Work(); });
  }
  ~HandlerPool() {
    {
      absl::MutexLock lock(&mu_);
      stop_ = true;
    }
    for (std::thread& t : threads_) t.join();
  }
  // False when the queue is full. Else the job owns `bytes` of the request byte count, and
  // gives them back once its handler returned.
  bool TryPush(uint64_t serial, HttpRequest request, int64_t bytes) {
    absl::MutexLock lock(&mu_);
    if (static_cast<int>(jobs_.size()) >= max_pending_) return false;
    jobs_.push_back({serial, std::move(request), bytes});
    return true;
  }

 private:
  void Work() {
    while (true) {
      Job job;
      {
        absl::MutexLock lock(&mu_);
        auto ready = [this]()
                         ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stop_ || !jobs_.empty(); };
        mu_.Await(absl::Condition(&ready));
        if (stop_) return;
        job = std::move(jobs_.front());
        jobs_.pop_front();
      }
      const uint64_t serial = job.serial;
      std::shared_ptr<Mailbox> mailbox = mailbox_;
      HttpReply reply = (*handler_)(job.request, [mailbox, serial] { mailbox->Wake(serial); });
      job.request = HttpRequest();
      *request_bytes_ -= job.bytes;
      mailbox_->Post(serial, std::move(reply));
    }
  }

  struct Job {
    uint64_t serial = 0;
    HttpRequest request;
    int64_t bytes = 0;
  };
  const HttpRouteHandler* handler_;
  const std::shared_ptr<Mailbox> mailbox_;
  const int max_pending_;
  std::atomic<int64_t>* const request_bytes_;
  absl::Mutex mu_;
  std::deque<Job> jobs_ ABSL_GUARDED_BY(mu_);
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::thread> threads_;
};

}  // namespace hkv
