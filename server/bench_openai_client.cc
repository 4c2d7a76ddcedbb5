#include "server/bench_openai_client.h"

#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "nlohmann/json.hpp"
#include "server/tcp_socket.h"

namespace hkv {
namespace {

// No byte from the server for this long fails the request.
constexpr int kIdleTimeoutMs = 120 * 1000;

tcp::Fd Connect(const std::string& host, int port, std::string* error) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* found = nullptr;
  if (::getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &found) != 0) {
    *error = "cannot resolve " + host;
    return tcp::Fd();
  }
  tcp::Fd fd;
  for (addrinfo* a = found; a != nullptr && !fd.valid(); a = a->ai_next) {
    tcp::Fd s(::socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol));
    if (s.valid() && ::connect(s.get(), a->ai_addr, a->ai_addrlen) == 0) fd = std::move(s);
  }
  ::freeaddrinfo(found);
  if (!fd.valid()) *error = "cannot connect to " + tcp::FormatAddress(host, port);
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

// Reads an HTTP reply, handing its (de-chunked) body to `on_body` as it arrives.
class ReplyReader {
 public:
  explicit ReplyReader(int fd) : fd_(fd) {}
  // False on a transport failure (with `error`); true once the reply ended.
  template <typename OnBody>
  bool Read(OnBody on_body, std::string* error) {
    char buf[16384];
    while (true) {
      pollfd p = {fd_, POLLIN, 0};
      if (::poll(&p, 1, kIdleTimeoutMs) == 0) {
        *error = "no reply from the server for 120 s";
        return false;
      }
      const ssize_t n = ::recv(fd_, buf, sizeof(buf), 0);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) {
        *error = tcp::ErrnoText(errno);
        return false;
      }
      if (n == 0) return true;  // Connection: close ends every reply.
      in_.append(buf, static_cast<size_t>(n));
      if (!head_done_ && !ParseHead()) continue;
      if (!chunked_) {
        on_body(in_);
        in_.clear();
        continue;
      }
      while (true) {  // Whole chunks only.
        const size_t eol = in_.find("\r\n");
        if (eol == std::string::npos) break;
        const size_t size = std::strtoul(in_.substr(0, eol).c_str(), nullptr, 16);
        if (size == 0) return true;
        if (in_.size() < eol + 2 + size + 2) break;
        on_body(in_.substr(eol + 2, size));
        in_.erase(0, eol + 2 + size + 2);
      }
    }
  }
  int status() const { return status_; }

 private:
  bool ParseHead() {
    const size_t end = in_.find("\r\n\r\n");
    if (end == std::string::npos) return false;
    const std::string head = absl::AsciiStrToLower(in_.substr(0, end));
    if (head.size() > 12) (void)absl::SimpleAtoi(head.substr(9, 3), &status_);
    chunked_ = absl::StrContains(head, "transfer-encoding: chunked");
    in_.erase(0, end + 4);
    head_done_ = true;
    return true;
  }

  const int fd_;
  std::string in_;
  bool head_done_ = false;
  bool chunked_ = false;
  int status_ = 0;
};

std::string Post(const std::string& host, int port, const std::string& path,
                 const std::string& body) {
  return absl::StrCat("POST ", path, " HTTP/1.1\r\nHost: ", tcp::FormatAddress(host, port),
                      "\r\nContent-Type: application/json\r\nAccept: text/event-stream\r\n"
                      "Content-Length: ",
                      body.size(), "\r\n\r\n", body);
}

// Handles one event's data of a completions stream.
void OnEvent(const std::string& data, OpenAiBenchResult* r) {
  if (data == "[DONE]") return;
  const nlohmann::json j = nlohmann::json::parse(data, nullptr, false);
  if (!j.is_object()) return;
  if (j.contains("error") && r->error.empty()) {
    r->error = j["error"].value("message", std::string("error event"));
  }
  if (j.contains("choices") && j["choices"].is_array() && !j["choices"].empty()) {
    const nlohmann::json& text = j["choices"][0]["text"];
    if (text.is_string() && !text.get<std::string>().empty()) {
      r->text_chunks.push_back(absl::Now());
    }
  }
  if (j.contains("usage") && j["usage"].is_object()) {
    r->prompt_tokens = j["usage"].value("prompt_tokens", 0);
    r->output_tokens = j["usage"].value("completion_tokens", 0);
  }
}

}  // namespace

OpenAiBenchResult RunOpenAiCompletion(const std::string& host, int port, const std::string& body) {
  OpenAiBenchResult r;
  r.start = absl::Now();
  tcp::Fd fd = Connect(host, port, &r.error);
  if (!fd.valid() || !SendAll(fd.get(), Post(host, port, "/v1/completions", body))) {
    if (r.error.empty()) r.error = "cannot send the request";
    r.end = absl::Now();
    return r;
  }
  ReplyReader reader(fd.get());
  std::string events, error;
  std::string error_body;
  const bool read = reader.Read(
      [&](const std::string& bytes) {
        if (reader.status() != 200) {
          error_body += bytes.substr(0, 4096);
          return;
        }
        events += bytes;
        for (size_t end; (end = events.find("\n\n")) != std::string::npos;) {
          if (absl::StartsWith(events, "data: ")) OnEvent(events.substr(6, end - 6), &r);
          events.erase(0, end + 2);
        }
      },
      &error);
  r.end = absl::Now();
  if (!read) {
    r.error = error;
  } else if (reader.status() != 200) {
    r.error = absl::StrCat("HTTP ", reader.status(), ": ", error_body);
  }
  r.ok = r.error.empty();
  return r;
}

std::string FetchOpenAiModels(const std::string& host, int port) {
  std::string error;
  tcp::Fd fd = Connect(host, port, &error);
  const std::string request =
      absl::StrCat("GET /v1/models HTTP/1.1\r\nHost: ", tcp::FormatAddress(host, port), "\r\n\r\n");
  if (!fd.valid() || !SendAll(fd.get(), request)) return "error: " + error;
  ReplyReader reader(fd.get());
  std::string body;
  if (!reader.Read([&](const std::string& bytes) { body += bytes; }, &error)) {
    return "error: " + error;
  }
  if (reader.status() != 200) return absl::StrCat("error: HTTP ", reader.status(), " ", body);
  return body;
}

}  // namespace hkv
