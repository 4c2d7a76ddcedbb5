#include "server/tls/tls_socket.h"

#include <openssl/err.h>
#include <pthread.h>
#include <signal.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>

namespace hkv {

void BlockSigpipeOnThisThread() {
  sigset_t pipe;
  sigemptyset(&pipe);
  sigaddset(&pipe, SIGPIPE);
  pthread_sigmask(SIG_BLOCK, &pipe, nullptr);
}

bool TlsSocket::Begin(int fd, TlsContextSource* tls) {
  fd_ = fd;
  if (tls == nullptr) return true;
  ctx_ = tls->Current();
  ssl_.reset(SSL_new(ctx_.get()));
  if (ssl_ == nullptr || SSL_set_fd(ssl_.get(), fd) != 1) {
    ERR_clear_error();
    ssl_.reset();
    return false;
  }
  // A write retried after WANT_WRITE may come from a buffer that grew (and moved) meanwhile;
  // its first bytes are the same, which is what OpenSSL requires.
  SSL_set_mode(ssl_.get(), SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER | SSL_MODE_ENABLE_PARTIAL_WRITE);
  SSL_set_accept_state(ssl_.get());
  return true;
}

// What a failed SSL_read / SSL_write means for the poll loop: -1 retry when the socket is ready
// (sets want_write_), 0 closed cleanly, -2 failed.
ssize_t TlsSocket::SslResult(int ret) {
  const int error = SSL_get_error(ssl_.get(), ret);
  ERR_clear_error();
  switch (error) {
    case SSL_ERROR_WANT_READ:
      want_write_ = false;
      return -1;
    case SSL_ERROR_WANT_WRITE:
      want_write_ = true;
      return -1;
    case SSL_ERROR_ZERO_RETURN:
      return 0;
    case SSL_ERROR_SYSCALL:
      if (errno == EINTR || errno == EAGAIN) return -1;
      return -2;
    default:
      return -2;  // a failed handshake (wrong protocol, no client certificate, ...)
  }
}

ssize_t TlsSocket::Read(char* buf, size_t n) {
  if (ssl_ != nullptr) {
    const int ret = SSL_read(ssl_.get(), buf, static_cast<int>(std::min<size_t>(n, 1 << 20)));
    if (ret > 0) {
      want_write_ = false;
      return ret;
    }
    return SslResult(ret);
  }
  while (true) {
    const ssize_t got = ::recv(fd_, buf, n, 0);
    if (got < 0 && errno == EINTR) continue;
    if (got < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return -1;
    return got < 0 ? -2 : got;
  }
}

ssize_t TlsSocket::Write(const char* buf, size_t n) {
  if (ssl_ != nullptr) {
    const int ret = SSL_write(ssl_.get(), buf, static_cast<int>(std::min<size_t>(n, 1 << 20)));
    if (ret > 0) {
      want_write_ = false;
      return ret;
    }
    // A write that wants to read (renegotiation) still waits on POLLOUT: the caller has bytes
    // to send and polls for it.
    const ssize_t result = SslResult(ret);
    if (result == -1) want_write_ = true;
    return result;
  }
  while (true) {
    const ssize_t sent = ::send(fd_, buf, n, MSG_NOSIGNAL);
    if (sent < 0 && errno == EINTR) continue;
    if (sent < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return -1;
    return sent < 0 ? -2 : sent;
  }
}

void TlsSocket::ShutdownWrite() {
  if (ssl_ != nullptr) {
    SSL_shutdown(ssl_.get());  // close_notify, best effort; not waiting for the peer's
    ERR_clear_error();
  }
  ::shutdown(fd_, SHUT_WR);
}

}  // namespace hkv
