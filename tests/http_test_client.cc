#include "tests/http_test_client.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace hkv::testing {

int ConnectLoopback(int port) {
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

bool SendAll(int fd, const std::string& data) {
  size_t sent = 0;
  while (sent < data.size()) {
    const ssize_t n = ::send(fd, data.data() + sent, data.size() - sent, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    sent += static_cast<size_t>(n);
  }
  return true;
}

std::string ReadUntilClose(int fd, int timeout_s, bool* closed) {
  timeval tv{timeout_s, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  std::string out;
  char buf[16384];
  while (true) {
    const ssize_t n = ::recv(fd, buf, sizeof(buf), 0);
    if (n > 0) {
      out.append(buf, static_cast<size_t>(n));
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    *closed = n == 0 || errno == ECONNRESET;
    return out;
  }
}

namespace {

std::string Dechunk(absl::string_view in) {
  std::string out;
  while (true) {
    const size_t eol = in.find("\r\n");
    if (eol == absl::string_view::npos) return out;
    const std::string size_text(in.substr(0, eol));
    const size_t size = std::strtoul(size_text.c_str(), nullptr, 16);
    if (size == 0) return out;
    if (in.size() < eol + 2 + size) return out + std::string(in.substr(eol + 2));
    out += std::string(in.substr(eol + 2, size));
    in.remove_prefix(std::min(in.size(), eol + 2 + size + 2));
  }
}

}  // namespace

HttpResult ParseHttpReply(const std::string& raw) {
  HttpResult r;
  absl::string_view rest = raw;
  // Interim 100 Continue replies come before the real one.
  while (absl::StartsWith(rest, "HTTP/1.1 100")) {
    const size_t end = rest.find("\r\n\r\n");
    if (end == absl::string_view::npos) return r;
    rest.remove_prefix(end + 4);
  }
  const size_t end = rest.find("\r\n\r\n");
  if (end == absl::string_view::npos) return r;
  std::vector<std::string> lines = absl::StrSplit(rest.substr(0, end), "\r\n");
  std::vector<std::string> first = absl::StrSplit(lines[0], ' ');
  if (first.size() < 2 || !absl::SimpleAtoi(first[1], &r.status)) return r;
  for (size_t i = 1; i < lines.size(); ++i) {
    const size_t colon = lines[i].find(':');
    if (colon == std::string::npos) continue;
    r.headers[absl::AsciiStrToLower(lines[i].substr(0, colon))] =
        std::string(absl::StripAsciiWhitespace(lines[i].substr(colon + 1)));
  }
  absl::string_view body = rest.substr(end + 4);
  if (r.headers["transfer-encoding"] == "chunked") {
    r.body = Dechunk(body);
  } else {
    r.body = std::string(body);
  }
  return r;
}

HttpResult HttpCall(int port, const std::string& method, const std::string& path,
                    const std::string& body, const std::string& extra_headers) {
  const int fd = ConnectLoopback(port);
  if (fd < 0) return {};
  const std::string request = absl::StrCat(
      method, " ", path, " HTTP/1.1\r\nHost: 127.0.0.1\r\n", extra_headers,
      "Content-Type: application/json\r\nContent-Length: ", body.size(), "\r\n\r\n", body);
  HttpResult r;
  if (SendAll(fd, request)) {
    bool closed = false;
    r = ParseHttpReply(ReadUntilClose(fd, 60, &closed));
    r.closed = closed;
  }
  ::close(fd);
  return r;
}

std::vector<std::string> SseData(const std::string& body) {
  std::vector<std::string> out;
  for (absl::string_view event : absl::StrSplit(body, "\n\n", absl::SkipEmpty())) {
    if (absl::ConsumePrefix(&event, "data: ")) out.emplace_back(event);
  }
  return out;
}

}  // namespace hkv::testing
