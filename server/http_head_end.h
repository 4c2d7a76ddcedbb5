#pragma once
// Where an HTTP/1.1 request head ends, shared by both HTTP servers (http_server.cc and
// streaming_http_connection_io.cc). Pure; thread-safe.

#include <cstddef>
#include <string>

namespace hkv {

// The offset just past the head's blank line in `in`, or npos while it is incomplete. A bare
// LF line end is accepted too. `from`: bytes of `in` already searched on an earlier call (the
// search restarts 3 bytes before, so a blank line split across reads is found).
size_t HttpHeadEnd(const std::string& in, size_t from);

}  // namespace hkv
