// StreamingHttpServer with test handlers and reply sources: streamed replies, a client that
// stops reading (its source is no longer polled), a client that leaves (its source is
// abandoned), a full handler queue (503), and Stop with replies pending.

#include "server/streaming_http_server.h"

#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <memory>
#include <string>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "tests/http_test_client.h"

namespace hkv {
namespace {

using testing::ConnectLoopback;
using testing::HttpCall;
using testing::ParseHttpReply;
using testing::ReadUntilClose;
using testing::SendAll;

struct SourceStats {
  std::atomic<int> polls{0};
  std::atomic<int> abandoned{0};
};

// Writes `chunk_bytes` per poll for `chunks` polls and wakes itself after each, so only the
// server's buffer cap keeps it from running ahead of its client.
class Producer : public HttpReplySource {
 public:
  Producer(SourceStats* stats, std::function<void()> wake, int chunks, size_t chunk_bytes)
      : stats_(stats), wake_(std::move(wake)), chunks_(chunks), chunk_bytes_(chunk_bytes) {}
  void Poll(HttpReplyWriter* w) override {
    if (stats_->polls++ == 0) w->Start(200, "text/plain", {});
    if (chunks_ < 0) return;  // Never ends; never wakes.
    w->Write(std::string(chunk_bytes_, 'x'));
    if (--chunks_ == 0) return w->Finish();
    wake_();
  }
  void Abandon() override { stats_->abandoned++; }

 private:
  SourceStats* stats_;
  std::function<void()> wake_;
  int chunks_;
  size_t chunk_bytes_;
};

bool WaitFor(const std::function<bool()>& done) {
  for (int i = 0; i < 1000 && !done(); ++i) absl::SleepFor(absl::Milliseconds(10));
  return done();
}

TEST(StreamingHttpServerTest, StreamsChunkedReplies) {
  SourceStats stats;
  StreamingHttpServer server([&](const HttpRequest& r, const std::function<void()>& wake) {
    HttpReply reply;
    if (r.path == "/fixed") {
      reply.body = absl::StrCat(r.method, " ", r.body);
      return reply;
    }
    reply.source = std::make_unique<Producer>(&stats, wake, 10, 1000);
    return reply;
  });
  auto port = server.Start("127.0.0.1", 0, "--test-port");
  ASSERT_TRUE(port.ok()) << port.status();
  const auto fixed = HttpCall(*port, "POST", "/fixed", "hello");
  EXPECT_EQ(fixed.status, 200);
  EXPECT_EQ(fixed.body, "POST hello");
  const auto streamed = HttpCall(*port, "GET", "/stream");
  EXPECT_EQ(streamed.status, 200);
  EXPECT_EQ(streamed.headers.at("transfer-encoding"), "chunked");
  EXPECT_EQ(streamed.body, std::string(10000, 'x'));
  EXPECT_EQ(stats.abandoned.load(), 0);
}

TEST(StreamingHttpServerTest, AClientThatStopsReadingPausesItsSource) {
  SourceStats stats;
  StreamingHttpLimits limits;
  limits.max_buffered_bytes = 256 << 10;
  constexpr int kChunks = 4000;  // 256 MiB in all: far more than any socket buffers.
  StreamingHttpServer server(
      [&](const HttpRequest&, const std::function<void()>& wake) {
        HttpReply reply;
        reply.source = std::make_unique<Producer>(&stats, wake, kChunks, 64 << 10);
        return reply;
      },
      limits);
  auto port = server.Start("127.0.0.1", 0, "--test-port");
  ASSERT_TRUE(port.ok());
  const int fd = ConnectLoopback(*port);
  ASSERT_TRUE(SendAll(fd, "GET / HTTP/1.1\r\n\r\n"));
  ASSERT_TRUE(WaitFor([&] { return stats.polls.load() > 4; }));
  absl::SleepFor(absl::Milliseconds(500));
  // Unpaused, the source would have made its 4000 chunks by now.
  EXPECT_LT(stats.polls.load(), kChunks / 4);
  bool closed = false;
  const std::string raw = ReadUntilClose(fd, 30, &closed);
  ::close(fd);
  EXPECT_TRUE(closed);
  EXPECT_EQ(ParseHttpReply(raw).body.size(), size_t{kChunks} * (64 << 10));
  EXPECT_EQ(stats.abandoned.load(), 0);
}

TEST(StreamingHttpServerTest, AClientThatLeavesAbandonsItsSource) {
  SourceStats stats;
  StreamingHttpServer server([&](const HttpRequest&, const std::function<void()>& wake) {
    HttpReply reply;
    reply.source = std::make_unique<Producer>(&stats, wake, -1, 0);
    return reply;
  });
  auto port = server.Start("127.0.0.1", 0, "--test-port");
  ASSERT_TRUE(port.ok());
  const int fd = ConnectLoopback(*port);
  ASSERT_TRUE(SendAll(fd, "GET / HTTP/1.1\r\n\r\n"));
  ASSERT_TRUE(WaitFor([&] { return stats.polls.load() == 1; }));
  ::close(fd);
  EXPECT_TRUE(WaitFor([&] { return stats.abandoned.load() == 1; }));
  EXPECT_TRUE(WaitFor([&] { return server.open_connections() == 0; }));
}

TEST(StreamingHttpServerTest, AFullHandlerQueueIs503AndStopAbandonsPendingReplies) {
  SourceStats stats;
  absl::Notification release;
  std::atomic<int> handled{0};
  StreamingHttpLimits limits;
  limits.handler_threads = 1;
  limits.max_pending_handlers = 1;
  StreamingHttpServer server(
      [&](const HttpRequest&, const std::function<void()>& wake) {
        handled++;
        release.WaitForNotification();
        HttpReply reply;
        reply.source = std::make_unique<Producer>(&stats, wake, -1, 0);
        return reply;
      },
      limits);
  auto port = server.Start("127.0.0.1", 0, "--test-port");
  ASSERT_TRUE(port.ok());
  const int busy = ConnectLoopback(*port);  // Holds the one handler thread.
  ASSERT_TRUE(SendAll(busy, "GET / HTTP/1.1\r\n\r\n"));
  ASSERT_TRUE(WaitFor([&] { return handled.load() == 1; }));
  const int queued = ConnectLoopback(*port);  // Waits in the queue.
  ASSERT_TRUE(SendAll(queued, "GET / HTTP/1.1\r\n\r\n"));
  absl::SleepFor(absl::Milliseconds(100));
  const auto refused = HttpCall(*port, "GET", "/");
  EXPECT_EQ(refused.status, 503);
  EXPECT_EQ(refused.headers.count("retry-after"), 1u);
  release.Notify();
  ASSERT_TRUE(WaitFor([&] { return stats.polls.load() == 2; }));
  server.Stop();
  EXPECT_EQ(stats.abandoned.load(), 2);
  ::close(busy);
  ::close(queued);
}

TEST(StreamingHttpServerTest, RequestBytesInFlightAreCapped) {
  StreamingHttpLimits limits;
  limits.max_request_bytes_in_flight = 64 << 10;
  StreamingHttpServer server(
      [](const HttpRequest& r, const std::function<void()>&) {
        HttpReply reply;
        reply.body = std::to_string(r.body.size());
        return reply;
      },
      limits);
  auto port = server.Start("127.0.0.1", 0, "--test-port");
  ASSERT_TRUE(port.ok());
  // One client sends 48 KiB of a 100 KiB body and stalls; together with it, a second 48 KiB
  // body is over the cap.
  const int stalled = ConnectLoopback(*port);
  ASSERT_TRUE(SendAll(
      stalled, "POST / HTTP/1.1\r\nContent-Length: 102400\r\n\r\n" + std::string(48 << 10, 'a')));
  absl::SleepFor(absl::Milliseconds(100));
  const auto refused = HttpCall(*port, "POST", "/", std::string(48 << 10, 'b'));
  EXPECT_EQ(refused.status, 503);
  ::close(stalled);
  // Once that client is gone, its bytes are given back.
  ASSERT_TRUE(WaitFor([&] { return server.open_connections() == 0; }));
  const auto served = HttpCall(*port, "POST", "/", std::string(48 << 10, 'b'));
  EXPECT_EQ(served.status, 200);
  EXPECT_EQ(served.body, std::to_string(48 << 10));
}

}  // namespace
}  // namespace hkv
