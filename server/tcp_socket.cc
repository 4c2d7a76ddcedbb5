#include "server/tcp_socket.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace hkv::tcp {
namespace {

// strerror_r is thread-safe; these pick the result of either its GNU or its XSI flavour.
[[maybe_unused]] const char* StrerrorResult(int /*xsi*/, const char* buf) { return buf; }
[[maybe_unused]] const char* StrerrorResult(const char* gnu, const char* /*buf*/) { return gnu; }

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

std::string FormatAddress(const std::string& host, int port) {
  return host.find(':') != std::string::npos ? absl::StrCat("[", host, "]:", port)
                                             : absl::StrCat(host, ":", port);
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
