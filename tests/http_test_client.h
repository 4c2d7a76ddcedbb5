#pragma once
// A raw HTTP/1.1 client over loopback sockets for tests of the HTTP API: whole exchanges
// (chunked bodies decoded), and the pieces a hostile client is made of (connect, send part of a
// request, read what comes back).

#include <map>
#include <string>
#include <vector>

namespace hkv::testing {

struct HttpResult {
  int status = 0;                              // 0: no parseable reply.
  std::map<std::string, std::string> headers;  // Names lower-cased.
  std::string body;                            // Decoded when chunked.
  bool closed = false;                         // The server closed the connection.
};

// A connected loopback socket, or -1.
int ConnectLoopback(int port);
// Sends all of `data` (false on failure).
bool SendAll(int fd, const std::string& data);
// What the server sends until it closes, or until `timeout_s` pass without a byte.
std::string ReadUntilClose(int fd, int timeout_s, bool* closed);
// Parses a raw reply (head, then body by Content-Length, chunks, or up to the close).
HttpResult ParseHttpReply(const std::string& raw);
// One request with `body` (Content-Length set) on a new connection; the whole reply.
HttpResult HttpCall(int port, const std::string& method, const std::string& path,
                    const std::string& body = "", const std::string& extra_headers = "");
// The `data: ...` payloads of a server-sent event body, in order.
std::vector<std::string> SseData(const std::string& body);

}  // namespace hkv::testing
