#pragma once
// StreamingHttpServer's per-connection state (request bytes in, reply bytes out) and the
// HttpReplyWriter that appends a reply to it. Shared by the server's source files only.
//
// Threading: server thread only.

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "server/http_status.h"
#include "server/streaming_http_server.h"
#include "server/tcp_socket.h"
#include "server/tls/tls_socket.h"

namespace hkv {

// Returns the status line and headers of a response, without the empty line that ends them.
inline std::string HttpResponseHead(int status, const std::string& content_type,
                                    const HttpHeaders& headers) {
  std::string head = absl::StrCat("HTTP/1.1 ", status, " ", HttpReasonPhrase(status),
                                  "\r\nContent-Type: ", content_type, "\r\n");
  for (const auto& [name, value] : headers) absl::StrAppend(&head, name, ": ", value, "\r\n");
  return head;
}

struct StreamingHttpServer::Connection {
  enum class State { kReading, kHandling, kReplying, kLingering };
  uint64_t serial = 0;
  // Declared before `io`, destroyed after it: a TLS session is freed before its socket closes.
  tcp::Fd fd;
  TlsSocket io;
  State state = State::kReading;
  absl::Time accepted;
  absl::Time deadline = absl::InfiniteFuture();
  std::string in;
  size_t head_end = 0;  // 0 until the head is complete.
  size_t body_bytes = 0;
  HttpRequest request;
  std::string out;
  size_t sent = 0;
  std::unique_ptr<HttpReplySource> source;
  bool started = false;   // A head was written.
  bool finished = false;  // The whole reply is in `out`.
  bool paused = false;    // The source was not polled: `out` was over the cap.
  // Request bytes this connection holds in the server's count (given back when it goes).
  std::atomic<int64_t>* request_bytes = nullptr;
  int64_t counted = 0;

  ~Connection() {
    if (request_bytes != nullptr) *request_bytes -= counted;
  }

  size_t unsent() const { return out.size() - sent; }
  void Abandon() {
    if (source != nullptr) source->Abandon();
    source.reset();
  }
};

class StreamingHttpServer::Writer : public HttpReplyWriter {
 public:
  explicit Writer(Connection* c) : c_(c) {}
  void Respond(int status, const std::string& content_type, HttpHeaders headers,
               std::string body) override {
    if (c_->started) return;
    headers.emplace_back("Content-Length", absl::StrCat(body.size()));
    headers.emplace_back("Connection", "close");
    c_->out += HttpResponseHead(status, content_type, headers) + "\r\n" + body;
    c_->started = c_->finished = true;
  }
  void Start(int status, const std::string& content_type, HttpHeaders headers) override {
    if (c_->started) return;
    headers.emplace_back("Transfer-Encoding", "chunked");
    headers.emplace_back("Cache-Control", "no-cache");
    headers.emplace_back("Connection", "close");
    c_->out += HttpResponseHead(status, content_type, headers) + "\r\n";
    c_->started = true;
  }
  void Write(std::string_view data) override {
    if (!c_->started || c_->finished || data.empty()) return;
    absl::StrAppend(&c_->out, absl::Hex(data.size()), "\r\n");
    c_->out.append(data.data(), data.size());
    c_->out += "\r\n";
  }
  void Finish() override {
    if (!c_->started || c_->finished) return;
    c_->out += "0\r\n\r\n";
    c_->finished = true;
  }

 private:
  Connection* c_;
};

}  // namespace hkv
