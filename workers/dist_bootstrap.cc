#include "workers/dist_bootstrap.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <chrono>
#include <climits>
#include <cstring>
#include <memory>
#include <thread>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/string_view.h"
#include "common/status_macros.h"

namespace hkv {
namespace {

// ---------------------------------------------------------------------------------------------
// Layout resolution.

constexpr char kAddrFlag[] = "--dist_addr";
constexpr char kWorldFlag[] = "--world_size";
constexpr char kRankFlag[] = "--rank";
constexpr char kAddrEnv[] = "LWS_LEADER_ADDRESS";
constexpr char kWorldEnv[] = "LWS_GROUP_SIZE";
constexpr char kRankEnv[] = "LWS_WORKER_INDEX";

absl::Status CheckPort(int64_t port, absl::string_view source) {
  if (port < 1 || port > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat("port ", port, " (from ", source, ") is outside 1..65535"));
  }
  return absl::OkStatus();
}

// Splits HOST, HOST:PORT, [IPV6] or [IPV6]:PORT; a bare host with several ':' is an IPv6
// address without a port. `*port` is left alone when the text has none.
absl::Status ParseHostPort(const std::string& text, absl::string_view source, std::string* host,
                           int32_t* port) {
  absl::string_view rest;
  if (!text.empty() && text[0] == '[') {
    const size_t close = text.find(']');
    if (close == std::string::npos) {
      return absl::InvalidArgumentError(
          absl::StrCat(source, " \"", text, "\": '[' without a matching ']'"));
    }
    *host = text.substr(1, close - 1);
    rest = absl::string_view(text).substr(close + 1);
    if (!rest.empty() && rest[0] != ':') {
      return absl::InvalidArgumentError(
          absl::StrCat(source, " \"", text, "\": expected ':PORT' after ']'"));
    }
  } else {
    const size_t colon = text.find(':');
    if (colon != std::string::npos && text.find(':', colon + 1) == std::string::npos) {
      *host = text.substr(0, colon);
      rest = absl::string_view(text).substr(colon);
    } else {
      *host = text;  // no ':' at all, or a bare IPv6 address.
    }
  }
  if (host->empty()) {
    return absl::InvalidArgumentError(absl::StrCat(source, " \"", text, "\": empty host"));
  }
  if (!rest.empty()) {
    rest.remove_prefix(1);  // the ':'
    int32_t p = 0;
    if (!absl::SimpleAtoi(rest, &p)) {
      return absl::InvalidArgumentError(
          absl::StrCat(source, " \"", text, "\": port \"", rest, "\" is not a number"));
    }
    HKV_RETURN_IF_ERROR(CheckPort(p, source));
    *port = p;
  }
  return absl::OkStatus();
}

// The environment variable `name`, or "" when unset.
std::string Env(const std::function<const char*(const char*)>& getenv_fn, const char* name) {
  const char* v = getenv_fn ? getenv_fn(name) : nullptr;
  return v == nullptr ? std::string() : std::string(v);
}

absl::Status ParseEnvInt(const std::string& text, const char* name, int32_t* out) {
  if (!absl::SimpleAtoi(text, out)) {
    return absl::InvalidArgumentError(absl::StrCat(name, "=\"", text, "\" is not an integer"));
  }
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------------------------
// Sockets.

constexpr uint32_t kHelloMagic = 0x484B5642;  // "HKVB"
constexpr uint32_t kReplyMagic = 0x484B5652;  // "HKVR"
constexpr uint32_t kAckMagic = 0x484B5641;    // "HKVA"
constexpr uint32_t kVersion = 1;
constexpr uint32_t kStatusOk = 0;
constexpr uint32_t kStatusError = 1;
constexpr size_t kHelloBytes = 16;
constexpr size_t kReplyHeaderBytes = 12;
constexpr size_t kAckBytes = 4;
constexpr size_t kMaxErrorBytes = 4096;
constexpr auto kRetryInterval = std::chrono::milliseconds(100);

// Owns a file descriptor; closes it on destruction.
class Fd {
 public:
  Fd() = default;
  explicit Fd(int fd) : fd_(fd) {}
  Fd(Fd&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
  Fd& operator=(Fd&& other) noexcept {
    if (this != &other) {
      Reset();
      fd_ = std::exchange(other.fd_, -1);
    }
    return *this;
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  ~Fd() { Reset(); }

  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }
  void Reset() {
    if (fd_ >= 0) ::close(fd_);  // never retried on EINTR: Linux frees the fd regardless.
    fd_ = -1;
  }

 private:
  int fd_ = -1;
};

// An overall deadline on the monotonic clock.
class Deadline {
 public:
  explicit Deadline(absl::Duration timeout)
      : end_(Clock::now() + absl::ToChronoNanoseconds(std::clamp(timeout, absl::ZeroDuration(),
                                                                 absl::Hours(24 * 365)))) {}

  bool Expired() const { return Clock::now() >= end_; }
  // Milliseconds left for poll(), rounded up; 0 once expired.
  int PollMs() const {
    const auto left = end_ - Clock::now();
    if (left <= Clock::duration::zero()) return 0;
    return static_cast<int>(
        std::min<int64_t>(std::chrono::ceil<std::chrono::milliseconds>(left).count(), INT_MAX));
  }
  // Sleeps for `d` or until the deadline, whichever is first.
  void SleepAtMost(std::chrono::milliseconds d) const {
    const auto left = end_ - Clock::now();
    if (left > Clock::duration::zero())
      std::this_thread::sleep_for(std::min<Clock::duration>(d, left));
  }

 private:
  using Clock = std::chrono::steady_clock;
  Clock::time_point end_;
};

// strerror_r is thread-safe; these pick the result of either its GNU or its XSI flavour.
[[maybe_unused]] const char* StrerrorResult(int /*xsi*/, const char* buf) { return buf; }
[[maybe_unused]] const char* StrerrorResult(const char* gnu, const char* /*buf*/) { return gnu; }

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

std::vector<uint8_t> MakeReply(uint32_t status, const uint8_t* payload, size_t n) {
  std::vector<uint8_t> out;
  out.reserve(kReplyHeaderBytes + n);
  PutU32(kReplyMagic, &out);
  PutU32(status, &out);
  PutU32(static_cast<uint32_t>(n), &out);
  out.insert(out.end(), payload, payload + n);
  return out;
}

// Best effort: tells a peer why it was turned away, without waiting.
void SendErrorReply(const Fd& fd, const std::string& message) {
  const std::string m = message.substr(0, kMaxErrorBytes);
  const std::vector<uint8_t> reply =
      MakeReply(kStatusError, reinterpret_cast<const uint8_t*>(m.data()), m.size());
  (void)WriteAll(fd.get(), reply.data(), reply.size(), Deadline(absl::ZeroDuration()));
}

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

std::string RankList(const std::vector<int32_t>& ranks) { return absl::StrJoin(ranks, ", "); }

// Rank 0's side.
absl::StatusOr<std::vector<uint8_t>> Lead(const DistLayout& layout,
                                          const std::vector<uint8_t>& blob,
                                          absl::Duration timeout) {
  const Deadline deadline(timeout);
  const int32_t world = layout.world_size;
  const std::string where = absl::StrCat("rendezvous rank 0 on port ", layout.port);
  HKV_ASSIGN_OR_RETURN(Fd listener, Listen(layout.port, deadline));

  struct Pending {
    Fd fd;
    uint8_t hello[kHelloBytes];
    size_t got = 0;
  };
  std::vector<Pending> pending;  // accepted, hello not complete yet
  std::vector<Fd> peers(world);  // by rank; peers[0] unused
  std::vector<bool> replied(world, false);
  std::vector<int32_t> left;  // ranks that joined, then hung up before the blob went out
  int32_t joined = 0;

  // Fails rank 0, telling each joined rank that has no reply yet why.
  auto fail = [&](const absl::Status& s) -> absl::Status {
    const absl::Status annotated = Annotate(s, where);
    for (int32_t r = 1; r < world; ++r) {
      if (peers[r].valid() && !replied[r]) SendErrorReply(peers[r], std::string(s.message()));
    }
    return annotated;
  };
  auto missing = [&] {
    std::vector<int32_t> ranks;
    for (int32_t r = 1; r < world; ++r) {
      if (!peers[r].valid()) ranks.push_back(r);
    }
    return ranks;
  };

  // Phase 1: accept connections and read hellos until every rank has joined.
  while (joined < world - 1) {
    std::vector<pollfd> fds;
    std::vector<int32_t> fd_rank;  // for fds[1..]: -1 - index into pending, or a joined rank
    fds.push_back({listener.get(), POLLIN, 0});
    for (size_t i = 0; i < pending.size(); ++i) {
      fds.push_back({pending[i].fd.get(), POLLIN, 0});
      fd_rank.push_back(-1 - static_cast<int32_t>(i));
    }
    for (int32_t r = 1; r < world; ++r) {
      if (peers[r].valid()) {
        fds.push_back({peers[r].get(), POLLIN, 0});  // only to notice a rank that goes away
        fd_rank.push_back(r);
      }
    }
    const int rc = ::poll(fds.data(), fds.size(), deadline.PollMs());
    if (rc < 0) {
      if (errno == EINTR) continue;
      return fail(SysError("poll", errno));
    }
    if (rc == 0) {
      if (!deadline.Expired()) continue;
      return fail(absl::DeadlineExceededError(
          absl::StrCat("rank(s) ", RankList(missing()), " of world size ", world,
                       " never joined within ", absl::FormatDuration(timeout),
                       left.empty() ? std::string()
                                    : absl::StrCat(" (rank(s) ", RankList(left),
                                                   " joined but hung up before the end)"))));
    }

    for (size_t k = 1; k < fds.size(); ++k) {
      if (fds[k].revents == 0) continue;
      const int32_t tag = fd_rank[k - 1];
      if (tag > 0) {
        // A joined rank sent data or hung up before its reply: drop it so it may rejoin.
        uint8_t byte;
        const ssize_t r = ::recv(peers[tag].get(), &byte, 1, 0);
        if (r < 0 && (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK)) continue;
        peers[tag].Reset();
        --joined;
        if (std::find(left.begin(), left.end(), tag) == left.end()) left.push_back(tag);
        continue;
      }
      Pending& p = pending[-1 - tag];
      const ssize_t r = ::recv(p.fd.get(), p.hello + p.got, kHelloBytes - p.got, 0);
      if (r < 0 && (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK)) continue;
      if (r <= 0) {
        p.fd.Reset();  // closed or broken before a full hello: not one of ours.
        continue;
      }
      p.got += static_cast<size_t>(r);
      if (p.got < kHelloBytes) continue;
      if (GetU32(p.hello) != kHelloMagic) {
        p.fd.Reset();  // a probe or some other protocol.
        continue;
      }
      const uint32_t version = GetU32(p.hello + 4);
      const int32_t rank = static_cast<int32_t>(GetU32(p.hello + 8));
      const int32_t peer_world = static_cast<int32_t>(GetU32(p.hello + 12));
      std::string problem;
      if (version != kVersion) {
        problem = absl::StrCat("a peer speaks rendezvous version ", version, ", rank 0 speaks ",
                               kVersion, "; run the same hkv build on every rank");
      } else if (peer_world != world) {
        problem = absl::StrCat("rank ", rank, " has world size ", peer_world,
                               " but rank 0 has world size ", world, "; every rank needs the same ",
                               kWorldFlag, " / ", kWorldEnv);
      } else if (rank < 1 || rank >= world) {
        problem = absl::StrCat("a peer claims rank ", rank, ", outside 1..", world - 1,
                               " for world size ", world);
      } else if (peers[rank].valid()) {
        problem = absl::StrCat("two peers claim rank ", rank, "; every rank needs its own ",
                               kRankFlag, " / ", kRankEnv);
      }
      if (!problem.empty()) {
        SendErrorReply(p.fd, problem);
        return fail(absl::FailedPreconditionError(problem));
      }
      peers[rank] = std::move(p.fd);
      ++joined;
    }
    pending.erase(std::remove_if(pending.begin(), pending.end(),
                                 [](const Pending& p) { return !p.fd.valid(); }),
                  pending.end());
    if (fds[0].revents != 0) {
      for (;;) {
        const int c = ::accept4(listener.get(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (c >= 0) {
          pending.push_back(Pending{Fd(c), {}, 0});
          continue;
        }
        if (errno == EINTR || errno == ECONNABORTED) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) break;
        if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
          return fail(SysError("accept", errno));
        }
        break;  // other errors (e.g. network errors on the new socket) concern one peer only.
      }
    }
  }
  listener.Reset();
  pending.clear();

  // Phase 2: send the blob to every rank.
  const std::vector<uint8_t> reply = MakeReply(kStatusOk, blob.data(), blob.size());
  for (int32_t r = 1; r < world; ++r) {
    absl::Status s = WriteAll(peers[r].get(), reply.data(), reply.size(), deadline);
    if (!s.ok()) return fail(Annotate(s, absl::StrCat("sending the blob to rank ", r)));
    replied[r] = true;
  }

  // Phase 3: wait for every ack.
  std::vector<std::array<uint8_t, kAckBytes>> acks(world);
  std::vector<size_t> got(world, 0);
  int32_t acked = 0;
  while (acked < world - 1) {
    std::vector<pollfd> fds;
    std::vector<int32_t> fd_rank;
    for (int32_t r = 1; r < world; ++r) {
      if (got[r] < kAckBytes) {
        fds.push_back({peers[r].get(), POLLIN, 0});
        fd_rank.push_back(r);
      }
    }
    const int rc = ::poll(fds.data(), fds.size(), deadline.PollMs());
    if (rc < 0) {
      if (errno == EINTR) continue;
      return Annotate(SysError("poll", errno), where);
    }
    if (rc == 0) {
      if (!deadline.Expired()) continue;
      return absl::DeadlineExceededError(absl::StrCat(where, ": rank(s) ", RankList(fd_rank),
                                                      " did not acknowledge the blob within ",
                                                      absl::FormatDuration(timeout)));
    }
    for (size_t k = 0; k < fds.size(); ++k) {
      if (fds[k].revents == 0) continue;
      const int32_t r = fd_rank[k];
      const ssize_t n = ::recv(peers[r].get(), acks[r].data() + got[r], kAckBytes - got[r], 0);
      if (n < 0 && (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK)) continue;
      if (n <= 0) {
        return absl::UnavailableError(absl::StrCat(
            where, ": rank ", r, " dropped the connection before acknowledging the blob",
            n < 0 ? absl::StrCat(" (", ErrnoText(errno), ")") : std::string()));
      }
      got[r] += static_cast<size_t>(n);
      if (got[r] < kAckBytes) continue;
      if (GetU32(acks[r].data()) != kAckMagic) {
        return absl::FailedPreconditionError(
            absl::StrCat(where, ": rank ", r, " sent a malformed acknowledgement"));
      }
      ++acked;
    }
  }
  return blob;
}

// The side of ranks 1..world_size-1.
absl::StatusOr<std::vector<uint8_t>> Follow(const DistLayout& layout, absl::Duration timeout) {
  const Deadline deadline(timeout);
  const std::string address = FormatAddress(layout.leader_host, layout.port);
  const std::string where =
      absl::StrCat("rendezvous rank ", layout.rank, " with rank 0 at ", address);
  auto fail = [&](const absl::Status& s) -> absl::Status {
    if (s.code() == absl::StatusCode::kDeadlineExceeded) {
      return absl::DeadlineExceededError(
          absl::StrCat(where, ": rank 0 did not complete the rendezvous within ",
                       absl::FormatDuration(timeout), " (", s.message(), ")"));
    }
    return Annotate(s, where);
  };

  absl::StatusOr<Fd> fd = ConnectWithRetry(layout.leader_host, layout.port, deadline);
  if (!fd.ok()) return fail(fd.status());

  std::vector<uint8_t> hello;
  PutU32(kHelloMagic, &hello);
  PutU32(kVersion, &hello);
  PutU32(static_cast<uint32_t>(layout.rank), &hello);
  PutU32(static_cast<uint32_t>(layout.world_size), &hello);
  absl::Status s = WriteAll(fd->get(), hello.data(), hello.size(), deadline);
  if (!s.ok()) return fail(Annotate(s, "sending hello"));

  uint8_t header[kReplyHeaderBytes];
  s = ReadAll(fd->get(), header, sizeof(header), deadline, "waiting for the other ranks");
  if (!s.ok()) return fail(s);
  if (GetU32(header) != kReplyMagic) {
    return fail(absl::FailedPreconditionError("the peer is not an hkv rendezvous (bad magic)"));
  }
  const uint32_t status = GetU32(header + 4);
  const uint32_t length = GetU32(header + 8);
  if ((status != kStatusOk && status != kStatusError) ||
      length > (status == kStatusOk ? TcpRendezvous::kMaxBlobBytes : kMaxErrorBytes)) {
    return fail(absl::FailedPreconditionError(
        absl::StrCat("malformed reply (status ", status, ", length ", length, ")")));
  }
  std::vector<uint8_t> payload(length);
  s = ReadAll(fd->get(), payload.data(), length, deadline, "receiving the blob");
  if (!s.ok()) return fail(s);
  if (status == kStatusError) {
    return fail(absl::FailedPreconditionError(
        absl::StrCat("rank 0 rejected the group: ", std::string(payload.begin(), payload.end()))));
  }
  std::vector<uint8_t> ack;
  PutU32(kAckMagic, &ack);
  s = WriteAll(fd->get(), ack.data(), ack.size(), deadline);
  if (!s.ok()) return fail(Annotate(s, "sending the acknowledgement"));
  return payload;
}

}  // namespace

absl::StatusOr<DistLayout> ResolveDistLayout(
    const std::string& dist_addr_flag, int32_t world_size_flag, int32_t rank_flag,
    const std::function<const char*(const char*)>& getenv_fn, int32_t default_port) {
  DistLayout layout;

  // World size.
  std::string world_source = "default";
  if (world_size_flag != 0 && world_size_flag != -1) {
    layout.world_size = world_size_flag;
    world_source = kWorldFlag;
  } else if (std::string env = Env(getenv_fn, kWorldEnv); !env.empty()) {
    HKV_RETURN_IF_ERROR(ParseEnvInt(env, kWorldEnv, &layout.world_size));
    world_source = kWorldEnv;
  }
  if (layout.world_size < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "world size must be >= 1, got ", layout.world_size, " (from ", world_source, ")"));
  }

  // Rank.
  std::string rank_source = "default";
  if (rank_flag != -1) {
    layout.rank = rank_flag;
    rank_source = kRankFlag;
  } else if (std::string env = Env(getenv_fn, kRankEnv); !env.empty()) {
    HKV_RETURN_IF_ERROR(ParseEnvInt(env, kRankEnv, &layout.rank));
    rank_source = kRankEnv;
  }
  if (layout.rank < 0 || layout.rank >= layout.world_size) {
    return absl::InvalidArgumentError(absl::StrCat(
        "rank ", layout.rank, " (from ", rank_source, ") is outside [0, ", layout.world_size,
        ") for world size ", layout.world_size, " (from ", world_source, ")"));
  }

  // Leader address.
  layout.port = default_port;
  std::string addr = dist_addr_flag;
  const char* addr_source = kAddrFlag;
  if (addr.empty()) {
    addr = Env(getenv_fn, kAddrEnv);
    addr_source = kAddrEnv;
  }
  if (!addr.empty()) {
    HKV_RETURN_IF_ERROR(ParseHostPort(addr, addr_source, &layout.leader_host, &layout.port));
    HKV_RETURN_IF_ERROR(
        CheckPort(layout.port, absl::StrCat("the default, as ", addr_source, " has no port")));
  } else if (layout.world_size > 1) {
    return absl::InvalidArgumentError(absl::StrCat("world size ", layout.world_size, " (from ",
                                                   world_source, ") needs rank 0's address: set ",
                                                   kAddrFlag, "=HOST[:PORT] or ", kAddrEnv));
  }
  return layout;
}

absl::StatusOr<std::vector<uint8_t>> TcpRendezvous::Exchange(
    const DistLayout& layout, const std::vector<uint8_t>& blob_from_rank0, absl::Duration timeout) {
  if (layout.world_size < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("rendezvous: world size must be >= 1, got ", layout.world_size));
  }
  if (layout.rank < 0 || layout.rank >= layout.world_size) {
    return absl::InvalidArgumentError(
        absl::StrCat("rendezvous: rank ", layout.rank, " is outside [0, ", layout.world_size, ")"));
  }
  if (layout.rank == 0 && blob_from_rank0.size() > kMaxBlobBytes) {
    return absl::InvalidArgumentError(absl::StrCat("rendezvous: blob of ", blob_from_rank0.size(),
                                                   " bytes exceeds the limit of ", kMaxBlobBytes));
  }
  if (layout.world_size == 1) return blob_from_rank0;
  if (layout.port < 1 || layout.port > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat("rendezvous: port ", layout.port, " is outside 1..65535"));
  }
  if (layout.rank == 0) return Lead(layout, blob_from_rank0, timeout);
  if (layout.leader_host.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("rendezvous: rank ", layout.rank, " has no leader host"));
  }
  return Follow(layout, timeout);
}

absl::StatusOr<int> TcpRendezvous::PickFreePort() {
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

}  // namespace hkv
