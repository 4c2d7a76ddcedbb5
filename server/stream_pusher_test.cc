#include "server/stream_pusher.h"

#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/time/time.h"
#include "gtest/gtest.h"

namespace hkv {
namespace {

StreamChunk Token(TokenId t) {
  StreamChunk c;
  c.token_ids = {t};
  return c;
}

// Chunks reach each stream in the order added, across many flushes and streams, and Drain
// returns only once all of them are there.
TEST(StreamPusherTest, KeepsEachStreamsOrderAndDrains) {
  StreamPusher pusher;
  std::vector<std::shared_ptr<RequestStream>> streams;
  for (int s = 0; s < 3; ++s) {
    streams.push_back(std::make_shared<RequestStream>(s, "r" + std::to_string(s)));
  }
  for (int step = 0; step < 200; ++step) {
    for (int s = 0; s < 3; ++s) pusher.Add(streams[s], Token(step * 10 + s));
    if (step % 3 == 0) pusher.Flush();  // Some batches span several steps.
  }
  pusher.Drain();
  for (int s = 0; s < 3; ++s) {
    for (int step = 0; step < 200; ++step) {
      std::optional<StreamChunk> c = streams[s]->Next(absl::ZeroDuration());
      ASSERT_TRUE(c.has_value()) << "stream " << s << " step " << step;
      ASSERT_EQ(c->token_ids, std::vector<TokenId>({step * 10 + s}));
    }
    EXPECT_FALSE(streams[s]->Next(absl::ZeroDuration()).has_value());
  }
}

// A flushed chunk reaches a reader already blocked in Next, without a Drain; nothing is pushed
// before its Flush.
TEST(StreamPusherTest, FlushWakesABlockedReader) {
  StreamPusher pusher;
  auto stream = std::make_shared<RequestStream>(1, "r");
  pusher.Add(stream, Token(7));
  absl::SleepFor(absl::Milliseconds(20));
  EXPECT_FALSE(stream->Next(absl::ZeroDuration()).has_value());
  std::optional<StreamChunk> got;
  std::thread reader([&] { got = stream->Next(absl::Seconds(30)); });
  pusher.Flush();
  reader.join();
  ASSERT_TRUE(got.has_value());
  EXPECT_EQ(got->token_ids, std::vector<TokenId>({7}));
}

// The destructor pushes what was flushed before it stops the thread.
TEST(StreamPusherTest, DestructorDrains) {
  auto stream = std::make_shared<RequestStream>(1, "r");
  {
    StreamPusher pusher;
    for (int i = 0; i < 100; ++i) pusher.Add(stream, Token(i));
    pusher.Flush();
  }
  for (int i = 0; i < 100; ++i) {
    std::optional<StreamChunk> c = stream->Next(absl::ZeroDuration());
    ASSERT_TRUE(c.has_value()) << i;
    EXPECT_EQ(c->token_ids, std::vector<TokenId>({i}));
  }
}

}  // namespace
}  // namespace hkv
