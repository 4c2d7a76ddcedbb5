#include "workers/tcp_socket.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <memory>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace hkv::tcp {
namespace {

// strerror_r is thread-safe; these pick the result of either its GNU or its XSI flavour.
[[maybe_unused]] const char* StrerrorResult(int /*xsi*/, const char* buf) { return buf; }
[[maybe_unused]] const char* StrerrorResult(const char* gnu, const char* /*buf*/) { return gnu; }

// A listening socket on every interface at `port`: dual-stack IPv6 when the host has IPv6,
// else IPv4. Sets *err on failure.
Fd TryListen(int family, int port, int* err) {
  Fd fd(::socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!fd.valid()) {
    *err = errno;
    return Fd();
  }
  const int one = 1, zero = 0;
  ::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  int rc;
  if (family == AF_INET6) {
    ::setsockopt(fd.get(), IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof(zero));
    sockaddr_in6 addr{};
    addr.sin6_family = AF_INET6;
    addr.sin6_addr = in6addr_any;
    addr.sin6_port = htons(static_cast<uint16_t>(port));
    rc = ::bind(fd.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof(addr));
  } else {
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_ANY);
    addr.sin_port = htons(static_cast<uint16_t>(port));
    rc = ::bind(fd.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof(addr));
  }
  if (rc != 0 || ::listen(fd.get(), SOMAXCONN) != 0) {
    *err = errno;
    return Fd();
  }
  return fd;
}

// True when a socket is connected to itself (TCP simultaneous open: connecting to a local port
// in the ephemeral range with no listener can pick that very port as the source).
bool IsSelfConnected(int fd) {
  sockaddr_storage local{}, peer{};
  socklen_t local_len = sizeof(local), peer_len = sizeof(peer);
  if (::getsockname(fd, reinterpret_cast<sockaddr*>(&local), &local_len) != 0 ||
      ::getpeername(fd, reinterpret_cast<sockaddr*>(&peer), &peer_len) != 0) {
    return false;
  }
  return local_len == peer_len && std::memcmp(&local, &peer, local_len) == 0;
}

struct AddrinfoDeleter {
  void operator()(addrinfo* ai) const { ::freeaddrinfo(ai); }
};

}  // namespace

void CloseFd(int fd) { ::close(fd); }

std::string ErrnoText(int err) {
  char buf[256] = {0};
  return StrerrorResult(strerror_r(err, buf, sizeof(buf)), buf);
}

absl::Status SysError(absl::string_view what, int err) {
  const std::string text = absl::StrCat(what, ": ", ErrnoText(err));
  if (err == ECONNRESET || err == EPIPE || err == ECONNABORTED) {
    return absl::UnavailableError(text);
  }
  return absl::InternalError(text);
}

// Same code, message prefixed with `context`.
absl::Status Annotate(const absl::Status& s, absl::string_view context) {
  if (s.ok()) return s;
  return absl::Status(s.code(), absl::StrCat(context, ": ", s.message()));
}

void PutU32(uint32_t v, std::vector<uint8_t>* out) {
  out->push_back(static_cast<uint8_t>(v >> 24));
  out->push_back(static_cast<uint8_t>(v >> 16));
  out->push_back(static_cast<uint8_t>(v >> 8));
  out->push_back(static_cast<uint8_t>(v));
}

uint32_t GetU32(const uint8_t* p) {
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | uint32_t{p[3]};
}

std::string FormatAddress(const std::string& host, int port) {
  return host.find(':') != std::string::npos ? absl::StrCat("[", host, "]:", port)
                                             : absl::StrCat(host, ":", port);
}

// Waits until `fd` has one of `events` (or an error/hangup, which the next call reports).
absl::Status WaitFd(int fd, short events, const Deadline& deadline, absl::string_view what) {
  for (;;) {
    pollfd p{fd, events, 0};
    const int rc = ::poll(&p, 1, deadline.PollMs());
    if (rc > 0) return absl::OkStatus();
    if (rc == 0) {
      if (deadline.Expired()) return absl::DeadlineExceededError(absl::StrCat("timed out ", what));
      continue;
    }
    if (errno != EINTR) return SysError("poll", errno);
  }
}

// Sends all of [data, data + n) on a non-blocking socket.
absl::Status WriteAll(int fd, const uint8_t* data, size_t n, const Deadline& deadline) {
  while (n > 0) {
    const ssize_t w = ::send(fd, data, n, MSG_NOSIGNAL);
    if (w > 0) {
      data += w;
      n -= static_cast<size_t>(w);
    } else if (w < 0 && errno == EINTR) {
      continue;
    } else if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      HKV_RETURN_IF_ERROR(WaitFd(fd, POLLOUT, deadline, "sending"));
    } else {
      return SysError("send", w < 0 ? errno : EPIPE);
    }
  }
  return absl::OkStatus();
}

// Receives exactly n bytes into `data` from a non-blocking socket.
absl::Status ReadAll(int fd, uint8_t* data, size_t n, const Deadline& deadline,
                     absl::string_view what) {
  while (n > 0) {
    const ssize_t r = ::recv(fd, data, n, 0);
    if (r > 0) {
      data += r;
      n -= static_cast<size_t>(r);
    } else if (r == 0) {
      return absl::UnavailableError(absl::StrCat("connection closed while ", what));
    } else if (errno == EINTR) {
      continue;
    } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
      HKV_RETURN_IF_ERROR(WaitFd(fd, POLLIN, deadline, what));
    } else {
      return SysError(absl::StrCat("recv while ", what), errno);
    }
  }
  return absl::OkStatus();
}

// Listens on `port`, retrying while it is in use (a socket of a previous run, a transient
// connection) until the deadline.
absl::StatusOr<Fd> Listen(int port, const Deadline& deadline) {
  for (;;) {
    int err6 = 0, err4 = 0;
    Fd fd = TryListen(AF_INET6, port, &err6);
    if (fd.valid()) return fd;
    if (err6 != EADDRINUSE) {
      fd = TryListen(AF_INET, port, &err4);
      if (fd.valid()) return fd;
    }
    const int err = err6 == EADDRINUSE ? err6 : err4;
    if (err != EADDRINUSE || deadline.Expired()) {
      return absl::Status(
          err == EADDRINUSE ? absl::StatusCode::kUnavailable : absl::StatusCode::kInternal,
          absl::StrCat("cannot listen on port ", port, ": ", ErrnoText(err)));
    }
    deadline.SleepAtMost(kRetryInterval);
  }
}

// Connects to host:port, retrying every ~100 ms (rank 0 may not be listening yet, its DNS name
// may not resolve yet) until the deadline.
absl::StatusOr<Fd> ConnectWithRetry(const std::string& host, int port, const Deadline& deadline) {
  const std::string port_text = absl::StrCat(port);
  std::string last_error = "no attempt made";
  for (;;) {
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICSERV;
    addrinfo* raw = nullptr;
    const int gai = ::getaddrinfo(host.c_str(), port_text.c_str(), &hints, &raw);
    std::unique_ptr<addrinfo, AddrinfoDeleter> list(raw);
    if (gai != 0) {
      last_error = absl::StrCat("cannot resolve \"", host,
                                "\": ", gai == EAI_SYSTEM ? ErrnoText(errno) : ::gai_strerror(gai));
    }
    for (const addrinfo* ai = list.get(); ai != nullptr; ai = ai->ai_next) {
      Fd fd(
          ::socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol));
      if (!fd.valid()) {
        last_error = absl::StrCat("socket: ", ErrnoText(errno));
        continue;
      }
      int err = 0;
      if (::connect(fd.get(), ai->ai_addr, ai->ai_addrlen) != 0) {
        err = errno;
        if (err == EINPROGRESS || err == EINTR) {
          absl::Status wait = WaitFd(fd.get(), POLLOUT, deadline, "connecting");
          if (!wait.ok()) {
            last_error = std::string(wait.message());
            break;
          }
          socklen_t len = sizeof(err);
          if (::getsockopt(fd.get(), SOL_SOCKET, SO_ERROR, &err, &len) != 0) err = errno;
        }
      }
      if (err == 0 && IsSelfConnected(fd.get())) err = ECONNREFUSED;
      if (err == 0) return fd;
      last_error = absl::StrCat("connect: ", ErrnoText(err));
    }
    if (deadline.Expired()) {
      return absl::DeadlineExceededError(absl::StrCat("last error: ", last_error));
    }
    deadline.SleepAtMost(kRetryInterval);
  }
}

absl::StatusOr<Fd> Accept(const Fd& listener, const Deadline& deadline) {
  for (;;) {
    const int c = ::accept4(listener.get(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (c >= 0) return Fd(c);
    if (errno == EINTR || errno == ECONNABORTED) continue;
    if (errno != EAGAIN && errno != EWOULDBLOCK) return SysError("accept", errno);
    HKV_RETURN_IF_ERROR(WaitFd(listener.get(), POLLIN, deadline, "waiting for a connection"));
  }
}

void TuneForSteps(int fd, absl::Duration idle, absl::Duration interval) {
  const int one = 1;
  const int idle_s = std::max<int>(1, static_cast<int>(absl::ToInt64Seconds(idle)));
  const int interval_s = std::max<int>(1, static_cast<int>(absl::ToInt64Seconds(interval)));
  const int count = 3;
  ::setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one));
  ::setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle_s, sizeof(idle_s));
  ::setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &interval_s, sizeof(interval_s));
  ::setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &count, sizeof(count));
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

bool PeerHungUp(int fd) {
  pollfd p{fd, POLLRDHUP, 0};
  const int rc = ::poll(&p, 1, 0);
  return rc > 0 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR)) != 0;
}

absl::StatusOr<int> PickFreePort() {
  Fd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd.valid()) return SysError("PickFreePort: socket", errno);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  if (::bind(fd.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) != 0) {
    return SysError("PickFreePort: bind", errno);
  }
  socklen_t len = sizeof(addr);
  if (::getsockname(fd.get(), reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    return SysError("PickFreePort: getsockname", errno);
  }
  return static_cast<int>(ntohs(addr.sin_port));
}

}  // namespace hkv::tcp
