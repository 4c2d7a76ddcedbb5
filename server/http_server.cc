#include "server/http_server.h"

#include <openssl/err.h>
#include <openssl/ssl.h>
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
#include "server/listen_socket.h"

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

const char* Reason(int status) {
  switch (status) {
    case 200:
      return "OK";
    case 400:
      return "Bad Request";
    case 404:
      return "Not Found";
    case 405:
      return "Method Not Allowed";
    case 408:
      return "Request Timeout";
    case 431:
      return "Request Header Fields Too Large";
    case 503:
      return "Service Unavailable";
    default:
      return "Error";
  }
}

std::string Head(int status, const std::string& content_type, size_t length) {
  return absl::StrCat("HTTP/1.1 ", status, " ", Reason(status), "\r\nContent-Type: ", content_type,
                      "\r\nContent-Length: ", length, "\r\nConnection: close\r\n\r\n");
}

// One best-effort send on a socket about to be closed (its client is being turned away).
void SendAndForget(int fd, int status) {
  const std::string text = Head(status, "text/plain", 0);
  [[maybe_unused]] ssize_t n = ::send(fd, text.data(), text.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
}

// End of the request head (the blank line), or npos; a bare LF line end is accepted too.
size_t HeadEnd(const std::string& in, size_t from) {
  from = from >= 3 ? from - 3 : 0;
  const size_t crlf = in.find("\r\n\r\n", from);
  if (crlf != std::string::npos) return crlf + 4;
  const size_t lf = in.find("\n\n", from);
  return lf == std::string::npos ? std::string::npos : lf + 2;
}

int Ms(absl::Duration d) {
  return static_cast<int>(std::clamp<int64_t>(absl::ToInt64Milliseconds(d) + 1, 0, 1000));
}

}  // namespace

struct HttpGetServer::Connection {
  enum class State { kReading, kWriting, kLingering };
  struct SslFree {
    void operator()(SSL* ssl) const { SSL_free(ssl); }
  };
  // Declared before `ssl`, destroyed after it: the session is freed before its socket closes.
  tcp::Fd fd;
  std::shared_ptr<SSL_CTX> ctx;  // Keeps the context of this connection alive across reloads.
  std::unique_ptr<SSL, SslFree> ssl;
  bool want_write = false;  // TLS: the session waits for the socket to take bytes.
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
          c.state == Connection::State::kWriting || c.want_write ? POLLOUT : POLLIN;
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
      if (it->second.state == Connection::State::kReading && it->second.ssl == nullptr) {
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
      if (oldest->second.ssl == nullptr) SendAndForget(oldest->first, 503);
      conns->erase(oldest);
    }
    Connection& c = (*conns)[fd];
    c.fd = tcp::Fd(fd);
    c.accepted = now;
    c.deadline = now + limits_.request_timeout;
    if (tls_ != nullptr) {
      c.ctx = tls_->Current();
      c.ssl.reset(SSL_new(c.ctx.get()));
      if (c.ssl == nullptr || SSL_set_fd(c.ssl.get(), fd) != 1) {
        ERR_clear_error();
        conns->erase(fd);
        continue;
      }
      SSL_set_accept_state(c.ssl.get());
    }
  }
}

void HttpGetServer::OnReadable(Connection* c) {
  char buf[4096];
  while (true) {
    const ssize_t n = Read(c, buf, sizeof(buf));
    if (n == -1) return;
    if (n <= 0) {  // The client closed (or reset) the connection.
      c->fd.Reset();
      return;
    }
    if (c->state == Connection::State::kLingering) continue;
    const size_t before = c->in.size();
    c->in.append(buf, static_cast<size_t>(n));
    const size_t end = HeadEnd(c->in, before);
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
  if (status != 200 && response.body.empty()) response.body = absl::StrCat(Reason(status), "\n");
  c->out = Head(status, response.content_type, response.body.size());
  if (!head_only) c->out += response.body;
  c->in.clear();
  c->sent = 0;
  c->state = Connection::State::kWriting;
  c->deadline = absl::Now() + limits_.write_timeout;
}

namespace {

// What a failed SSL_read / SSL_write means for the poll loop: -1 retry when the socket is ready
// (sets `want_write`), 0 closed cleanly, -2 failed.
ssize_t SslResult(SSL* ssl, int ret, bool* want_write) {
  const int error = SSL_get_error(ssl, ret);
  ERR_clear_error();
  switch (error) {
    case SSL_ERROR_WANT_READ:
      *want_write = false;
      return -1;
    case SSL_ERROR_WANT_WRITE:
      *want_write = true;
      return -1;
    case SSL_ERROR_ZERO_RETURN:
      return 0;
    case SSL_ERROR_SYSCALL:
      if (errno == EINTR || errno == EAGAIN) return -1;
      return -2;
    default:
      return -2;  // a failed handshake (wrong protocol, no client certificate, ...)
  }
}

}  // namespace

ssize_t HttpGetServer::Read(Connection* c, char* buf, size_t n) {
  if (c->ssl != nullptr) {
    const int ret = SSL_read(c->ssl.get(), buf, static_cast<int>(n));
    if (ret > 0) {
      c->want_write = false;
      return ret;
    }
    return SslResult(c->ssl.get(), ret, &c->want_write);
  }
  while (true) {
    const ssize_t got = ::recv(c->fd.get(), buf, n, 0);
    if (got < 0 && errno == EINTR) continue;
    if (got < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return -1;
    return got < 0 ? -2 : got;
  }
}

ssize_t HttpGetServer::Write(Connection* c, const char* buf, size_t n) {
  if (c->ssl != nullptr) {
    const int ret = SSL_write(c->ssl.get(), buf, static_cast<int>(std::min<size_t>(n, 1 << 20)));
    if (ret > 0) return ret;
    // A write that wants to read (renegotiation) still polls for POLLOUT: the state is kWriting.
    bool want_write = true;
    return SslResult(c->ssl.get(), ret, &want_write);
  }
  while (true) {
    const ssize_t sent = ::send(c->fd.get(), buf, n, MSG_NOSIGNAL);
    if (sent < 0 && errno == EINTR) continue;
    if (sent < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return -1;
    return sent < 0 ? -2 : sent;
  }
}

bool HttpGetServer::Flush(Connection* c) {
  while (c->sent < c->out.size()) {
    const ssize_t n = Write(c, c->out.data() + c->sent, c->out.size() - c->sent);
    if (n == -1) return true;
    if (n <= 0) return false;
    c->sent += static_cast<size_t>(n);
  }
  if (c->ssl != nullptr) {
    SSL_shutdown(c->ssl.get());  // close_notify, best effort; not waiting for the peer's
    ERR_clear_error();
  }
  ::shutdown(c->fd.get(), SHUT_WR);
  c->out.clear();
  c->state = Connection::State::kLingering;
  c->deadline = std::min(c->deadline, absl::Now() + kLinger);
  return true;
}

}  // namespace hkv
