#pragma once
// TlsSocket: the bytes of one accepted, non-blocking socket, in plaintext or through an OpenSSL
// server session, for the poll-loop servers (HttpGetServer for /metrics, StreamingHttpServer for
// the HTTP API). The handshake runs inside the first reads and writes, so it is bounded by
// whatever deadline the server keeps for the request's head. Each session holds the context it
// was made with: a rotation (TlsContextSource) reaches new connections only.
//
// Results of Read and Write: > 0 bytes moved, 0 the peer closed, -1 would block (want_write()
// says whether the session now waits for POLLOUT rather than POLLIN), -2 failed (a bad
// handshake: wrong protocol, a client certificate missing or not signed by the client CA).
//
// Not thread-safe: used by its server's poll thread alone. Does not own the socket; REQUIRES:
// the socket outlives this object (declare the fd before the TlsSocket).

#include <openssl/ssl.h>
#include <sys/types.h>

#include <cstddef>
#include <memory>

#include "server/tls/tls_config.h"

namespace hkv {

// Blocks SIGPIPE on the calling thread, for the poll threads that own TlsSockets: OpenSSL
// writes with write(2), not send(MSG_NOSIGNAL), so a peer that closed mid-handshake or
// mid-reply would otherwise kill the process; blocked, the write fails with EPIPE instead.
void BlockSigpipeOnThisThread();

class TlsSocket {
 public:
  TlsSocket() = default;
  // Plaintext on `fd` when `tls` is null, else a server session on `tls`'s current context.
  // False when OpenSSL could not make the session (the connection is then to be dropped).
  bool Begin(int fd, TlsContextSource* tls);

  ssize_t Read(char* buf, size_t n);
  ssize_t Write(const char* buf, size_t n);
  // Ends the sending side: close_notify under TLS (best effort), then shutdown(SHUT_WR).
  void ShutdownWrite();

  bool tls() const { return ssl_ != nullptr; }
  // TLS: the session's last call wants the socket writable before it can go on.
  bool want_write() const { return want_write_; }

 private:
  struct SslFree {
    void operator()(SSL* ssl) const { SSL_free(ssl); }
  };
  ssize_t SslResult(int ret);

  int fd_ = -1;
  std::shared_ptr<SSL_CTX> ctx_;  // Keeps this connection's context alive across reloads.
  std::unique_ptr<SSL, SslFree> ssl_;
  bool want_write_ = false;
};

}  // namespace hkv
