#pragma once
// Small blocking-with-deadline TCP helpers over POSIX sockets, shared by the multi-node
// rendezvous (workers/dist_bootstrap.h) and the step channel (workers/step_channel.h).
//
// Every socket here is non-blocking; each call that waits takes a Deadline and fails with
// DEADLINE_EXCEEDED once it passes. A peer that closes or resets the connection is UNAVAILABLE;
// other socket failures are INTERNAL.
//
// Thread-compatible: an Fd is used by one thread at a time; the free functions keep no state.

#include <algorithm>
#include <chrono>
#include <climits>
#include <cstdint>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace hkv::tcp {

// Wait between connection attempts while the listener is not up yet.
constexpr auto kRetryInterval = std::chrono::milliseconds(100);

// Owns a file descriptor; closes it on destruction.
void CloseFd(int fd);  // close(2), never retried on EINTR (Linux frees the fd regardless)

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
    if (fd_ >= 0) CloseFd(fd_);
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

// strerror text for `err` (thread-safe).
std::string ErrnoText(int err);
// UNAVAILABLE for a connection the peer dropped (reset, broken pipe), else INTERNAL.
absl::Status SysError(absl::string_view what, int err);
// Same code, message prefixed with `context`.
absl::Status Annotate(const absl::Status& s, absl::string_view context);
// Big-endian (network order) 32-bit integers.
void PutU32(uint32_t v, std::vector<uint8_t>* out);
uint32_t GetU32(const uint8_t* p);
// HOST:PORT, or [HOST]:PORT for an IPv6 address.
std::string FormatAddress(const std::string& host, int port);

// Waits until `fd` has one of `events` (or an error/hangup, which the next call reports).
absl::Status WaitFd(int fd, short events, const Deadline& deadline, absl::string_view what);
// Sends all of [data, data + n).
absl::Status WriteAll(int fd, const uint8_t* data, size_t n, const Deadline& deadline);
// Receives exactly n bytes into `data`; `what` names the wait in errors.
absl::Status ReadAll(int fd, uint8_t* data, size_t n, const Deadline& deadline,
                     absl::string_view what);
// A listening socket on every interface at `port` (dual-stack IPv6 when the host has IPv6),
// retrying while the port is in use until the deadline.
absl::StatusOr<Fd> Listen(int port, const Deadline& deadline);
// Accepts one connection on `listener` (non-blocking, close-on-exec), waiting until the deadline.
absl::StatusOr<Fd> Accept(const Fd& listener, const Deadline& deadline);
// Connects to host:port, retrying every ~100 ms (the listener may not be up yet, its DNS name
// may not resolve yet) until the deadline.
absl::StatusOr<Fd> ConnectWithRetry(const std::string& host, int port, const Deadline& deadline);
// TCP keepalive probes after `idle` without traffic, so that a peer whose host vanished (no FIN)
// is noticed within about idle + 3 * interval; and TCP_NODELAY (steps are small messages).
void TuneForSteps(int fd, absl::Duration idle, absl::Duration interval);
// True once the peer has closed or reset the connection (checked without reading).
bool PeerHungUp(int fd);
// A TCP port that was free on 127.0.0.1 a moment ago (bind port 0, read it, close). For tests;
// another process may take it before it is used.
absl::StatusOr<int> PickFreePort();

}  // namespace hkv::tcp
