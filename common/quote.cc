#include "common/quote.h"

#include "absl/strings/str_cat.h"

namespace hkv {
namespace {

// Appends the escaped form of byte `c` to `out`.
void AppendEscaped(unsigned char c, std::string* out) {
  static constexpr char kHex[] = "0123456789abcdef";
  switch (c) {
    case '"':
      out->append("\\\"");
      return;
    case '\\':
      out->append("\\\\");
      return;
    case '\n':
      out->append("\\n");
      return;
    case '\t':
      out->append("\\t");
      return;
    default:
      break;
  }
  if (c >= 0x20 && c < 0x7f) {
    out->push_back(static_cast<char>(c));
    return;
  }
  out->append("\\x");
  out->push_back(kHex[c >> 4]);
  out->push_back(kHex[c & 0xf]);
}

}  // namespace

std::string QuoteForError(std::string_view value) {
  std::string out = "\"";
  size_t used = 0;  // Bytes of `value` quoted so far.
  std::string escaped;
  for (; used < value.size(); ++used) {
    escaped.clear();
    AppendEscaped(static_cast<unsigned char>(value[used]), &escaped);
    // One escape is at most 4 characters, so the quoted part stays within the bound.
    if (out.size() - 1 + escaped.size() > kQuotedValueMaxChars) break;
    out += escaped;
  }
  out.push_back('"');
  if (used < value.size()) absl::StrAppend(&out, "... (", value.size(), " bytes)");
  return out;
}

}  // namespace hkv
