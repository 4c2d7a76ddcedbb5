// Defect: 128 slow HTTP clients knocked out /metrics and /healthz (the HPA scales on them).
// cpp-httplib served each connection on one of a fixed pool of threads with a 5 s read timeout
// restarted per byte, so idle connections delayed a scrape by seconds and clients sending one
// byte a second held the pool for ever. Now one polling thread serves every connection, each
// with a whole-request deadline; these tests hold 128 (and 300) such connections open and
// scrape through them.

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "server/metrics.h"

namespace hkv {
namespace {

int Connect(int port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

void SetReceiveTimeout(int fd, int seconds) {
  timeval tv{seconds, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
}

// Everything the server sends until it closes, or until `timeout_s` passes without a byte
// (then `*closed` is false).
std::string ReadAll(int fd, int timeout_s, bool* closed) {
  SetReceiveTimeout(fd, timeout_s);
  std::string out;
  char buf[4096];
  while (true) {
    const ssize_t n = ::recv(fd, buf, sizeof(buf), 0);
    if (n > 0) {
      out.append(buf, static_cast<size_t>(n));
      continue;
    }
    *closed = n == 0 || errno == ECONNRESET;
    return out;
  }
}

// A whole GET through a fresh connection; empty when no complete answer came within the bound.
// The bound is generous: an answer takes milliseconds; before the fix it took tens of seconds
// or never came.
constexpr int kScrapeBoundS = 5;
std::string Scrape(int port, const std::string& path) {
  const int fd = Connect(port);
  if (fd < 0) return "";
  const std::string request = "GET " + path + " HTTP/1.1\r\nHost: localhost\r\n\r\n";
  ::send(fd, request.data(), request.size(), MSG_NOSIGNAL);
  bool closed = false;
  std::string response = ReadAll(fd, kScrapeBoundS, &closed);
  ::close(fd);
  return closed ? response : "";
}

class MetricsSlowClientsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    metrics_.ready = 1;
    ASSERT_TRUE(server_.Start("127.0.0.1", 0).ok());
  }
  void TearDown() override {
    for (int fd : fds_) ::close(fd);
  }
  // Opens `n` connections that stay open until the test ends.
  std::vector<int> Open(int n) {
    std::vector<int> opened;
    for (int i = 0; i < n; ++i) {
      const int fd = Connect(server_.port());
      EXPECT_GE(fd, 0) << "connection " << i;
      if (fd < 0) break;
      opened.push_back(fd);
      fds_.push_back(fd);
    }
    return opened;
  }
  void ExpectScrapesAnswer() {
    const std::string metrics = Scrape(server_.port(), "/metrics");
    EXPECT_EQ(metrics.rfind("HTTP/1.1 200", 0), 0u) << "/metrics: '" << metrics << "'";
    EXPECT_NE(metrics.find("hkv_ready 1"), std::string::npos);
    const std::string healthz = Scrape(server_.port(), "/healthz");
    EXPECT_EQ(healthz.rfind("HTTP/1.1 200", 0), 0u) << "/healthz: '" << healthz << "'";
  }

  EngineMetrics metrics_;
  MetricsServer server_{&metrics_};
  std::vector<int> fds_;
};

TEST_F(MetricsSlowClientsTest, ScrapesAnswerWhileSlowAndIdleClientsHoldConnections) {
  const std::vector<int> idle = Open(64);
  const std::vector<int> slow = Open(64);
  ASSERT_EQ(idle.size() + slow.size(), 128u);
  // The slow clients send a valid request one byte per second.
  const std::string request = "GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n";
  std::atomic<bool> stop{false};
  std::thread trickle([&] {
    for (size_t i = 0; !stop.load() && i < request.size(); ++i) {
      for (int fd : slow) ::send(fd, &request[i], 1, MSG_NOSIGNAL | MSG_DONTWAIT);
      for (int t = 0; t < 10 && !stop.load(); ++t) {
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
      }
    }
  });
  // Let the server take them all in before scraping (a shorter wait only makes this easier).
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  ExpectScrapesAnswer();

  // And none of them can hold its connection past the request deadline: the server answers
  // 408 (or just closes) within seconds, although a slow client has sent only a few bytes.
  bool closed = false;
  const std::string idle_answer = ReadAll(idle.front(), 10, &closed);
  EXPECT_TRUE(closed) << "an idle connection is still open after 10 s";
  EXPECT_EQ(idle_answer.find("200 OK"), std::string::npos);
  closed = false;
  const std::string slow_answer = ReadAll(slow.front(), 10, &closed);
  EXPECT_TRUE(closed) << "a slow connection is still open after 10 s";
  EXPECT_EQ(slow_answer.find("200 OK"), std::string::npos);
  ExpectScrapesAnswer();
  stop = true;
  trickle.join();
}

TEST_F(MetricsSlowClientsTest, ConnectionsPastTheCapDoNotLockOutAScrape) {
  // More idle connections than the server keeps open (256): it makes room for new ones.
  ASSERT_EQ(Open(300).size(), 300u);
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  ExpectScrapesAnswer();
}

TEST_F(MetricsSlowClientsTest, OversizedRequestHeadIsRefused) {
  const int fd = Connect(server_.port());
  ASSERT_GE(fd, 0);
  fds_.push_back(fd);
  const std::string request =
      "GET /metrics HTTP/1.1\r\nX-Filler: " + std::string(16 << 10, 'a') + "\r\n\r\n";
  ::send(fd, request.data(), request.size(), MSG_NOSIGNAL);
  bool closed = false;
  const std::string answer = ReadAll(fd, 10, &closed);
  EXPECT_EQ(answer.rfind("HTTP/1.1 431", 0), 0u) << answer;
  EXPECT_TRUE(closed);
  ExpectScrapesAnswer();
}

}  // namespace
}  // namespace hkv
