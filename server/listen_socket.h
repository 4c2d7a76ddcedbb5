#pragma once
// Listening TCP sockets for the server's own endpoints, bound exclusively: SO_REUSEADDR (so that a
// restart finds its port despite connections in TIME_WAIT) but never SO_REUSEPORT, so a second
// process asking for a port that is already served fails instead of silently sharing it.
//
// Thread-compatible: the functions keep no state.

#include <string>

#include "absl/status/statusor.h"
#include "server/tcp_socket.h"

namespace hkv {

// A non-blocking, close-on-exec socket listening on host:port (host: a numeric address or a
// name; port 0 picks a free one) with room for `backlog` pending connections. UNAVAILABLE
// with the reason otherwise; a port in use says "is in use" (and what `flag` sets).
absl::StatusOr<tcp::Fd> ListenTcp(const std::string& host, int port, int backlog,
                                  const std::string& flag);

// The port a listening socket is bound to.
int BoundPort(const tcp::Fd& fd);

}  // namespace hkv
