#pragma once
// Python's str methods over UTF-8 bytes, by code point where Python counts code points
// (len, indexing, slicing, strip's character sets). Case mapping is ASCII only: non-ASCII
// letters keep their case. Thread-safe: pure functions.

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"

namespace hkv::jinja {

// Byte offsets of each code point's start, plus s.size() at the end.
std::vector<size_t> CodePointOffsets(absl::string_view s);
// str.strip/lstrip/rstrip: `chars` unset strips Unicode whitespace (str.isspace()).
std::string PyStrip(absl::string_view s, const std::optional<std::string>& chars, bool left,
                    bool right);
// str.split(sep, maxsplit): `sep` unset splits on runs of whitespace.
std::vector<std::string> PySplit(absl::string_view s, const std::optional<std::string>& sep,
                                 int64_t maxsplit);
// str.replace(old, new, count); count < 0 replaces all. An empty `old` inserts between code
// points, as Python does.
std::string PyReplace(absl::string_view s, absl::string_view old, absl::string_view repl,
                      int64_t count);
std::string PyUpper(absl::string_view s);
std::string PyLower(absl::string_view s);
std::string PyCapitalize(absl::string_view s);
// Jinja's |title: each word (after -, whitespace, ( { [ <) upper-cased first, rest lowered.
std::string JinjaTitle(absl::string_view s);
// Python's str.title(): upper after any non-letter.
std::string PyTitle(absl::string_view s);

}  // namespace hkv::jinja
