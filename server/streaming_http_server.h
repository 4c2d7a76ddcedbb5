#pragma once
// StreamingHttpServer: the HTTP/1.1 server of the OpenAI-compatible API. One thread polls
// non-blocking sockets; a small fixed pool runs the route handlers (JSON parsing, tokenizing,
// Engine::Submit), so that no handler delays another connection's bytes; responses may stream
// (chunked transfer encoding, for server-sent events) for as long as the engine produces them.
//
//   accept --(head + body within request_timeout; head <= max_header_bytes,
//             body <= max_body_bytes)--> handler (pool) --> HttpReply
//          --> fixed reply (Content-Length), or a source polled when it wakes the server
//          --> drained (no progress for write_timeout closes it) --> close (no keep-alive)
//
// A client that sends nothing or one byte at a time loses its connection at its deadline (408);
// a head over the cap gets 431, a body over it 413 (before it is read); past max_connections the
// oldest connection still sending its request is closed. A connection whose client goes away
// (EOF or reset) while its reply is pending or streaming is closed at once and its source is
// Abandon()ed, which cancels the engine request. Replies are never buffered past
// max_buffered_bytes per connection: a client that stops reading stops its source being polled.
//
// TLS (optional, UseTls): each accepted socket runs a non-blocking OpenSSL server session
// (server/tls/tls_socket.h) on the server thread; the handshake counts against request_timeout
// like the head does, and a failed one (no client certificate from the client CA under mTLS)
// just closes the connection. New connections take the TlsContextSource's current context, so
// rotated certificates apply without a restart.
//
// Threading: Start, Stop and the destructor from one owning thread. Handlers run on pool threads
// (concurrently); an HttpReplySource is used by the server thread alone once it is handed over,
// and its wake function may be called from any thread.

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "server/tcp_socket.h"
#include "server/tls/tls_config.h"

namespace hkv {

struct HttpRequest {
  std::string method;  // "GET", "POST", ...
  std::string path;    // Without the query string.
  // Names lower-cased, in the order sent.
  std::vector<std::pair<std::string, std::string>> headers;
  std::string body;
  // Returns the first header named `name` (lower case), or "".
  std::string Header(const std::string& name) const;
};

using HttpHeaders = std::vector<std::pair<std::string, std::string>>;

// How a reply source writes its response. Exactly one of Respond or Start, first; Write and
// Finish only after Start. Server thread only.
class HttpReplyWriter {
 public:
  virtual ~HttpReplyWriter() = default;
  // A whole response with a Content-Length.
  virtual void Respond(int status, const std::string& content_type, HttpHeaders headers,
                       std::string body) = 0;
  // The head of a streamed (chunked) response.
  virtual void Start(int status, const std::string& content_type, HttpHeaders headers) = 0;
  virtual void Write(std::string_view data) = 0;
  virtual void Finish() = 0;
};

// A response made over time (an engine request's output). Owned by the server thread once the
// handler returns it.
class HttpReplySource {
 public:
  virtual ~HttpReplySource() = default;
  // Writes what is ready now. Called once when the source is handed over, then after each call
  // of the wake function the handler was given, while the reply is neither finished nor over
  // its buffer cap (then again once the client has read it).
  virtual void Poll(HttpReplyWriter* writer) = 0;
  // The connection ended before the reply finished (the client left, a timeout, Stop).
  virtual void Abandon() = 0;
};

struct HttpReply {
  int status = 200;
  std::string content_type = "application/json";
  HttpHeaders headers;  // Extra headers (e.g. Retry-After).
  std::string body;
  std::unique_ptr<HttpReplySource> source;  // When set, status/body above are unused.
};

// Runs on a pool thread. `wake` is thread-safe and cheap; it makes the server Poll the reply's
// source, and may be called before the handler returns.
using HttpRouteHandler =
    std::function<HttpReply(const HttpRequest& request, const std::function<void()>& wake)>;

struct StreamingHttpLimits {
  absl::Duration request_timeout = absl::Seconds(10);  // From accept to the end of the body.
  absl::Duration write_timeout = absl::Seconds(30);    // Longest stall in sending a reply.
  size_t max_header_bytes = 16384;                     // Request line + headers.
  size_t max_body_bytes = 4 << 20;
  size_t max_buffered_bytes = 256 << 10;  // A reply's unsent bytes before its source pauses.
  // Request bytes held at once, over all connections, from arrival until their handler is done
  // (so that many large bodies at once cannot exhaust memory); past it, 503.
  int64_t max_request_bytes_in_flight = 256 << 20;
  int max_connections = 8192;
  int handler_threads = 4;
  int max_pending_handlers = 4096;  // Requests waiting for a handler thread; more get 503.
  int backlog = 4096;
};

class StreamingHttpServer {
 public:
  StreamingHttpServer(HttpRouteHandler handler, StreamingHttpLimits limits = {});
  ~StreamingHttpServer();  // Stops.

  // Serves HTTPS with contexts from `tls` (which must outlive the server). Call before Start.
  void UseTls(TlsContextSource* tls) { tls_ = tls; }
  // Binds host:port (0 picks a free port), starts the threads; returns the bound port.
  // UNAVAILABLE when the address cannot be bound (a port in use names `flag`).
  absl::StatusOr<int> Start(const std::string& host, int port, const std::string& flag);
  // Abandons every pending reply, closes every connection and joins the threads. Idempotent.
  void Stop();
  int open_connections() const { return open_connections_.load(); }
  const StreamingHttpLimits& limits() const { return limits_; }

 private:
  struct Connection;
  struct Mailbox;
  class Writer;
  class HandlerPool;
  void Run();
  void AcceptAll();
  void OnReadable(Connection* c);
  void Dispatch(Connection* c, HttpRequest request);
  void Install(uint64_t serial, HttpReply reply);
  void PollSource(Connection* c);
  bool Flush(Connection* c);  // False once `c` is done (closed or failed).
  // Answers `c` itself (an OpenAI-style JSON error object) and ends its connection after it.
  void FixedReply(Connection* c, int status, const std::string& message);
  void Expire(absl::Time now);

  const HttpRouteHandler handler_;
  const StreamingHttpLimits limits_;
  TlsContextSource* tls_ = nullptr;  // Not owned; null: plaintext.
  std::shared_ptr<Mailbox> mailbox_;
  std::unique_ptr<HandlerPool> pool_;
  tcp::Fd listener_;
  std::atomic<bool> stop_{false};
  std::atomic<int> open_connections_{0};
  std::atomic<int64_t> request_bytes_{0};  // See max_request_bytes_in_flight.
  // Server-thread state.
  absl::flat_hash_map<uint64_t, std::unique_ptr<Connection>> conns_;  // By serial.
  uint64_t next_serial_ = 1;
  absl::Time accept_paused_until_;
  std::thread thread_;
};

}  // namespace hkv
