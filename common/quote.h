#pragma once
// Quoting of client-supplied strings (policy names, request ids, roles...) for error messages.
// A client controls these values, so an error that echoes one must stay short and printable:
// gRPC sends the message as a header, and a header past the peer's metadata limit breaks the
// call (RESOURCE_EXHAUSTED) instead of reporting the real error.
//
// Thread-safe: pure functions.

#include <cstddef>
#include <string>
#include <string_view>

namespace hkv {

// The most characters of a client value an error message quotes (escapes included).
inline constexpr size_t kQuotedValueMaxChars = 64;

// Returns `value` in double quotes with `"`, `\` and every byte outside printable ASCII escaped
// (\n, \t, \xNN); past kQuotedValueMaxChars it is cut and followed by `... (N bytes)`. The
// result is at most kQuotedValueMaxChars + 40 bytes whatever the input.
std::string QuoteForError(std::string_view value);

}  // namespace hkv
