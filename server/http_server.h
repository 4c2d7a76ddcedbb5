#pragma once
// HttpGetServer: a small HTTP/1.x server for a fixed set of GET endpoints (/metrics, /healthz)
// that no client can keep from answering another. One thread polls non-blocking sockets:
//
//   accept --(request head within request_timeout, at most max_header_bytes)--> respond
//          --(response drained within write_timeout)--> close (no keep-alive)
//
// A client that sends nothing, or one byte at a time, loses its connection at its deadline
// (408); a head over the cap gets 431; past max_connections the oldest connection still
// reading is closed to make room, so a new scrape is always let in. No state survives a
// connection. Handlers run on the server's thread and must be quick and non-blocking.
//
// TLS (optional, UseTls): each accepted socket runs an OpenSSL server session in non-blocking
// mode on the same thread; the handshake counts against request_timeout like the head does, so
// a client that stalls its handshake is cut off the same way. Every new connection takes the
// TlsContextSource's current context, so rotated certificates apply without a restart.
//
// Threading: Start, Stop and the destructor from one owning thread; open_connections() from any.

#include <atomic>
#include <cstddef>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "server/tcp_socket.h"
#include "server/tls/tls_config.h"

namespace hkv {

struct HttpResponse {
  int status = 200;
  std::string content_type = "text/plain";
  std::string body;
};

// Answers a GET of one path (the query string is ignored).
using HttpHandler = std::function<HttpResponse()>;

struct HttpServerLimits {
  absl::Duration request_timeout = absl::Seconds(2);  // From accept to the end of the head.
  absl::Duration write_timeout = absl::Seconds(5);    // To drain the response.
  size_t max_header_bytes = 8192;                     // Request line + headers.
  int max_connections = 256;
  int backlog = 1024;
};

class HttpGetServer {
 public:
  HttpGetServer(std::map<std::string, HttpHandler> routes, HttpServerLimits limits = {});
  ~HttpGetServer();  // Stops.

  // Serves HTTPS with contexts from `tls` (which must outlive the server). Call before Start.
  void UseTls(TlsContextSource* tls) { tls_ = tls; }
  // Binds host:port (0 picks a free port) and starts the thread; returns the bound port.
  // UNAVAILABLE when the address cannot be bound (a port in use names `flag`).
  absl::StatusOr<int> Start(const std::string& host, int port, const std::string& flag);
  // Closes every connection and the listener and joins the thread. Idempotent.
  void Stop();
  // Connections open right now.
  int open_connections() const { return open_connections_.load(); }

 private:
  struct Connection;
  void Run();
  void AcceptAll(std::map<int, Connection>* conns);
  // Reads what `c` sent; builds its response once the head is complete.
  void OnReadable(Connection* c);
  // Sends what it can of `c`'s response; false once `c` is done (closed or failed).
  bool Flush(Connection* c);
  void Respond(Connection* c, int status, HttpResponse response, bool head_only);

  const std::map<std::string, HttpHandler> routes_;
  const HttpServerLimits limits_;
  TlsContextSource* tls_ = nullptr;  // Not owned; null: plaintext.
  tcp::Fd listener_;
  tcp::Fd wake_;  // eventfd: Stop() wakes the poll loop.
  std::atomic<bool> stop_{false};
  std::atomic<int> open_connections_{0};
  absl::Time accept_paused_until_;  // Server thread only: no accepting before this.
  std::thread thread_;
};

}  // namespace hkv
