#pragma once
// Small POSIX socket helpers for the server's own listeners (server/listen_socket.h, the
// metrics HTTP server) and for tests: an owning Fd, error text, address formatting.
//
// Thread-compatible: an Fd is used by one thread at a time; the free functions keep no state.

#include <cstdint>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace hkv::tcp {

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

// strerror text for `err` (thread-safe).
std::string ErrnoText(int err);
// UNAVAILABLE for a connection the peer dropped (reset, broken pipe), else INTERNAL.
absl::Status SysError(absl::string_view what, int err);
// HOST:PORT, or [HOST]:PORT for an IPv6 address.
std::string FormatAddress(const std::string& host, int port);

// A TCP port that was free on 127.0.0.1 a moment ago (bind port 0, read it, close). For tests;
// another process may take it before it is used.
absl::StatusOr<int> PickFreePort();

}  // namespace hkv::tcp
