#pragma once
// The reason phrase of an HTTP status line, shared by both HTTP servers. Pure; thread-safe.

namespace hkv {

// "OK", "Not Found", ...; "Error" for a status this server never sends.
const char* HttpReasonPhrase(int status);

}  // namespace hkv
