// StreamingHttpServer's socket I/O of one connection on the server thread: reading and parsing
// the request (head and body within the limits) and flushing the reply under its deadlines.
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "server/http_head_end.h"
#include "server/streaming_http_connection.h"
#include "server/streaming_http_handler_pool.h"
#include "server/streaming_http_server.h"

namespace hkv {
namespace {

// After the reply is sent, how long leftovers are read and dropped before the socket closes
// (closing with unread input resets the connection and can lose the reply on the client side).
constexpr absl::Duration kLinger = absl::Seconds(1);

}  // namespace

void StreamingHttpServer::OnReadable(Connection* c) {
  char buf[16384];
  while (c->fd.valid()) {
    const ssize_t n = c->io.Read(buf, sizeof(buf));
    if (n == -1) return;
    if (n <= 0) {  // The client closed (or reset) the connection, or its handshake failed.
      c->fd.Reset();
      return;
    }
    if (c->state != Connection::State::kReading) continue;  // Leftovers: dropped.
    if (request_bytes_.fetch_add(n) + n > limits_.max_request_bytes_in_flight) {
      request_bytes_ -= n;
      return FixedReply(c, 503, "the server is busy: too many request bytes in flight");
    }
    c->counted += n;
    const size_t before = c->in.size();
    c->in.append(buf, static_cast<size_t>(n));
    if (c->head_end == 0) {
      const size_t end = HttpHeadEnd(c->in, before);
      if (end == std::string::npos) {
        if (c->in.size() > limits_.max_header_bytes) {
          return FixedReply(c, 431, "the request head is too large");
        }
        continue;
      }
      if (end > limits_.max_header_bytes) {
        return FixedReply(c, 431, "the request head is too large");
      }
      c->head_end = end;
      std::vector<std::string> lines =
          absl::StrSplit(c->in.substr(0, end), '\n', absl::SkipWhitespace());
      std::vector<std::string> parts =
          absl::StrSplit(absl::StripSuffix(lines.empty() ? "" : lines[0], "\r"), ' ');
      if (parts.size() != 3 || !absl::StartsWith(parts[2], "HTTP/1.")) {
        return FixedReply(c, 400, "malformed request line");
      }
      c->request.method = parts[0];
      c->request.path = parts[1].substr(0, parts[1].find('?'));
      for (size_t i = 1; i < lines.size(); ++i) {
        const absl::string_view line = absl::StripSuffix(lines[i], "\r");
        const size_t colon = line.find(':');
        if (colon == absl::string_view::npos || colon == 0) {
          return FixedReply(c, 400, "malformed header line");
        }
        c->request.headers.emplace_back(
            absl::AsciiStrToLower(line.substr(0, colon)),
            std::string(absl::StripAsciiWhitespace(line.substr(colon + 1))));
      }
      if (!c->request.Header("transfer-encoding").empty()) {
        return FixedReply(c, 411, "send the body with a Content-Length (no chunked requests)");
      }
      const std::string length = c->request.Header("content-length");
      uint64_t body = 0;
      if (!length.empty() && !absl::SimpleAtoi(length, &body)) {
        return FixedReply(c, 400, "bad Content-Length");
      }
      if (body > limits_.max_body_bytes) {
        return FixedReply(c, 413,
                          absl::StrCat("the request body is ", body, " bytes; at most ",
                                       limits_.max_body_bytes, " (--http-max-body-bytes)"));
      }
      c->body_bytes = static_cast<size_t>(body);
      if (body > 0 && absl::EqualsIgnoreCase(c->request.Header("expect"), "100-continue")) {
        c->out += "HTTP/1.1 100 Continue\r\n\r\n";  // Flushed once this read is done.
      }
    }
    if (c->in.size() >= c->head_end + c->body_bytes) {
      c->request.body = c->in.substr(c->head_end, c->body_bytes);
      c->in.clear();
      c->in.shrink_to_fit();
      Dispatch(c, std::move(c->request));
    }
  }
}

bool StreamingHttpServer::Flush(Connection* c) {
  const absl::Time now = absl::Now();
  bool progress = false;
  while (c->unsent() > 0) {
    const ssize_t n = c->io.Write(c->out.data() + c->sent, c->unsent());
    if (n == -1) break;
    if (n <= 0) return false;
    c->sent += static_cast<size_t>(n);
    progress = true;
  }
  if (c->unsent() == 0) {
    c->out.clear();
    c->sent = 0;
  } else if (c->sent > (1 << 16)) {
    c->out.erase(0, c->sent);
    c->sent = 0;
  }
  if (c->state == Connection::State::kLingering) return true;
  if (c->finished && c->unsent() == 0) {
    c->io.ShutdownWrite();
    c->state = Connection::State::kLingering;
    c->deadline = now + kLinger;
    return true;
  }
  if (c->state != Connection::State::kReplying) return true;
  if (c->unsent() == 0) {
    c->deadline = absl::InfiniteFuture();  // Waiting on the engine, not on the client.
  } else if (progress || c->deadline == absl::InfiniteFuture()) {
    c->deadline = now + limits_.write_timeout;
  }
  if (c->paused && c->unsent() < limits_.max_buffered_bytes) {
    PollSource(c);
    if (c->unsent() > 0) return Flush(c);
  }
  return true;
}

}  // namespace hkv
