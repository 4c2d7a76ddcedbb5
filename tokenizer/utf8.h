#pragma once
// UTF-8 repair of model output, for every path that sends text to a client (gRPC text deltas,
// `hkv generate`, stop-string matching, an HTTP API). Tokens are raw bytes (byte-fallback and
// byte-level pieces), and a model may emit any sequence of them, valid UTF-8 or not; proto3 and
// JSON strings must be valid UTF-8, or clients fail the whole stream.
//
// Repair follows the Unicode "substitution of maximal subparts" practice (Unicode 15, section
// 3.9): each maximal subpart of an ill-formed sequence (the longest prefix of a well-formed
// sequence, or else one byte) becomes one U+FFFD. That is what Python's
// bytes.decode("utf-8", errors="replace") and Hugging Face tokenizers' decode return, so
// SanitizeUtf8(b) == b.decode("utf-8", "replace") for every byte string b.
//
// Streams: Utf8Sanitizer holds back an incomplete character while more bytes may complete it,
// so pushing bytes piece by piece and flushing at the end returns exactly SanitizeUtf8 of all
// of them, whatever the split.
//
// Threading: the free functions are thread-safe; a Utf8Sanitizer is one stream's state
// (thread-compatible).

#include <cstddef>
#include <string>
#include <string_view>

namespace hkv {

inline constexpr std::string_view kUtf8Replacement = "\xEF\xBF\xBD";  // U+FFFD

// Streaming repair of one byte stream into valid UTF-8.
class Utf8Sanitizer {
 public:
  // Appends `bytes`; returns the text that is now final (valid UTF-8, possibly empty). A tail
  // that is a valid but incomplete character (at most 3 bytes) is held back.
  std::string Push(std::string_view bytes);
  // Ends the stream: returns U+FFFD for a held-back incomplete character, else "".
  std::string Flush();
  // Returns the number of bytes held back.
  size_t held() const { return held_.size(); }

 private:
  std::string held_;  // A proper prefix of a well-formed multi-byte character.
};

// Returns `bytes` as valid UTF-8, each maximal ill-formed subpart replaced with U+FFFD.
std::string SanitizeUtf8(std::string_view bytes);

// Returns whether `bytes` is well-formed UTF-8 (Unicode Table 3-7: no overlongs, surrogates,
// code points past U+10FFFF or truncated characters).
bool IsValidUtf8(std::string_view bytes);

}  // namespace hkv
