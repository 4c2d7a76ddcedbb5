#include "server/http_server.h"

#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "common/logging.h"
#include "server/http_head_end.h"
#include "server/http_status.h"
#include "server/listen_socket.h"
#include "server/tls/tls_socket.h"

namespace hkv {
namespace {

// After the response is sent, how long the request's leftovers are read and dropped before
// the socket closes (closing with unread input would reset the connection and could lose the
// response on the client's side).
constexpr absl::Duration kLinger = absl::Seconds(1);
// Connections accepted per poll round, so a flood of connects cannot starve the others.
constexpr int kAcceptsPerRound = 64;
// Out of file descriptors, accepting waits this long instead of spinning on the listener.
constexpr absl::Duration kAcceptBackoff = absl::Milliseconds(100);

std::string Head(int status, const std::string& content_type, size_t length) {
  return absl::StrCat("HTTP/1.1 ", status, " ", HttpReasonPhrase(status),
                      "\r\nContent-Type: ", content_type, "\r\nContent-Length: ", length,
                      "\r\nConnection: close\r\n\r\n");
}

// One best-effort send on a socket about to be closed (its client is being turned away).
void SendAndForget(int fd, int status) {
  const std::string text = Head(status, "text/plain", 0);
  [[maybe_unused]] ssize_t n = ::send(fd, text.data(), text.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
}

int Ms(absl::Duration d) {
  return static_cast<int>(std::clamp<int64_t>(absl::ToInt64Milliseconds(d) + 1, 0, 1000));
}

}  // namespace

struct HttpGetServer::Connection {
  enum class State { kReading, kWriting, kLingering };
  // Declared before `io`, destroyed after it: the session is freed before its socket closes.
  tcp::Fd fd;
  TlsSocket io;
  State state = State::kReading;
  absl::Time accepted;
  absl::Time deadline;
  std::string in;
  std::string out;
  size_t sent = 0;
};

HttpGetServer::HttpGetServer(std::map<std::string, HttpHandler> routes, HttpServerLimits limits)
    : routes_(std::move(routes)), limits_(limits) {}

HttpGetServer::~HttpGetServer() { Stop(); }

absl::StatusOr<int> HttpGetServer::Start(const std::string& host, int port,
                                         const std::string& flag) {
  absl::StatusOr<tcp::Fd> listener = ListenTcp(host, port, limits_.backlog, flag);
  if (!listener.ok()) return listener.status();
  listener_ = std::move(*listener);
  wake_ = tcp::Fd(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
  if (!wake_.valid()) return absl::InternalError("eventfd: " + tcp::ErrnoText(errno));
  const int bound = BoundPort(listener_);
  thread_ = std::thread([this] { Run(); });
  return bound;
}

void HttpGetServer::Stop() {
  if (!thread_.joinable()) return;
  stop_ = true;
  const uint64_t one = 1;
  [[maybe_unused]] ssize_t n = ::write(wake_.get(), &one, sizeof(one));
  thread_.join();
  listener_.Reset();
  wake_.Reset();
}

void HttpGetServer::Run() {
  BlockSigpipeOnThisThread();
  std::map<int, Connection> conns;  // By file descriptor.
  std::vector<pollfd> fds;
  while (!stop_.load()) {
    absl::Time next = absl::Now() + absl::Seconds(1);
    fds.clear();
    fds.push_back({wake_.get(), POLLIN, 0});
    const bool accepting = absl::Now() >= accept_paused_until_;
    fds.push_back({accepting ? listener_.get() : -1, POLLIN, 0});
    if (!accepting) next = std::min(next, accept_paused_until_);
    for (const auto& [fd, c] : conns) {
      const short events =
          c.state == Connection::State::kWriting || c.io.want_write() ? POLLOUT : POLLIN;
      fds.push_back({fd, events, 0});
      next = std::min(next, c.deadline);
    }
    if (::poll(fds.data(), fds.size(), Ms(next - absl::Now())) < 0 && errno != EINTR) {
      HKV_LOG(ERROR) << "metrics http: poll: " << tcp::ErrnoText(errno);
      break;
    }
    for (size_t i = 2; i < fds.size(); ++i) {
      if (fds[i].revents == 0) continue;
      auto it = conns.find(fds[i].fd);
      if (it == conns.end()) continue;
      Connection& c = it->second;
      bool keep = true;
      if (c.state == Connection::State::kWriting) {
        keep = Flush(&c);
      } else {
        OnReadable(&c);
        keep = c.fd.valid() && (c.state != Connection::State::kWriting || Flush(&c));
      }
      if (!keep) conns.erase(it);
    }
    const absl::Time now = absl::Now();
    for (auto it = conns.begin(); it != conns.end();) {
      if (now < it->second.deadline) {
        ++it;
        continue;
      }
      if (it->second.state == Connection::State::kReading && !it->second.io.tls()) {
        SendAndForget(it->first, 408);
      }
      it = conns.erase(it);
    }
    if (fds[1].revents & POLLIN) AcceptAll(&conns);
    open_connections_ = static_cast<int>(conns.size());
  }
  conns.clear();
  open_connections_ = 0;
}

void HttpGetServer::AcceptAll(std::map<int, Connection>* conns) {
  for (int i = 0; i < kAcceptsPerRound; ++i) {
    const int fd = ::accept4(listener_.get(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
        accept_paused_until_ = absl::Now() + kAcceptBackoff;
      }
      return;  // EAGAIN: nothing more for now.
    }
    const absl::Time now = absl::Now();
    if (static_cast<int>(conns->size()) >= limits_.max_connections) {
      // Make room by dropping the connection that has had the longest to send its request.
      auto oldest = conns->end();
      for (auto it = conns->begin(); it != conns->end(); ++it) {
        if (it->second.state != Connection::State::kReading) continue;
        if (oldest == conns->end() || it->second.accepted < oldest->second.accepted) oldest = it;
      }
      if (oldest == conns->end()) {
        if (tls_ == nullptr) SendAndForget(fd, 503);
        tcp::CloseFd(fd);
        continue;
      }
      if (!oldest->second.io.tls()) SendAndForget(oldest->first, 503);
      conns->erase(oldest);
    }
    Connection& c = (*conns)[fd];
    c.fd = tcp::Fd(fd);
    c.accepted = now;
    c.deadline = now + limits_.request_timeout;
    if (!c.io.Begin(fd, tls_)) conns->erase(fd);
  }
}

void HttpGetServer::OnReadable(Connection* c) {
  char buf[4096];
  while (true) {
    const ssize_t n = c->io.Read(buf, sizeof(buf));
    if (n == -1) return;
    if (n <= 0) {  // The client closed (or reset) the connection.
      c->fd.Reset();
      return;
    }
    if (c->state == Connection::State::kLingering) continue;
    const size_t before = c->in.size();
    c->in.append(buf, static_cast<size_t>(n));
    const size_t end = HttpHeadEnd(c->in, before);
    if (end == std::string::npos) {
      if (c->in.size() > limits_.max_header_bytes) return Respond(c, 431, {}, false);
      continue;
    }
    if (end > limits_.max_header_bytes) return Respond(c, 431, {}, false);
    const std::string line = c->in.substr(0, c->in.find('\n'));
    std::vector<std::string> parts = absl::StrSplit(absl::StripSuffix(line, "\r"), ' ');
    if (parts.size() != 3 || !absl::StartsWith(parts[2], "HTTP/1.")) {
      return Respond(c, 400, {}, false);
    }
    const bool head_only = parts[0] == "HEAD";
    if (parts[0] != "GET" && !head_only) return Respond(c, 405, {}, false);
    const std::string path = parts[1].substr(0, parts[1].find('?'));
    auto route = routes_.find(path);
    if (route == routes_.end()) return Respond(c, 404, {}, head_only);
    HttpResponse response = route->second();
    return Respond(c, response.status, std::move(response), head_only);
  }
}

void HttpGetServer::Respond(Connection* c, int status, HttpResponse response, bool head_only) {
  if (status != 200 && response.body.empty())
    response.body = absl::StrCat(HttpReasonPhrase(status), "\n");
  c->out = Head(status, response.content_type, response.body.size());
  if (!head_only) c->out += response.body;
  c->in.clear();
  c->sent = 0;
  c->state = Connection::State::kWriting;
  c->deadline = absl::Now() + limits_.write_timeout;
}

bool HttpGetServer::Flush(Connection* c) {
  while (c->sent < c->out.size()) {
    const ssize_t n = c->io.Write(c->out.data() + c->sent, c->out.size() - c->sent);
    if (n == -1) return true;
    if (n <= 0) return false;
    c->sent += static_cast<size_t>(n);
  }
  c->io.ShutdownWrite();
  c->out.clear();
  c->state = Connection::State::kLingering;
  c->deadline = std::min(c->deadline, absl::Now() + kLinger);
  return true;
}

}  // namespace hkv
