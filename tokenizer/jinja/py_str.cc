#include "tokenizer/jinja/py_str.h"

#include <cctype>

namespace hkv::jinja {
namespace {

uint32_t DecodeAt(absl::string_view s, size_t i, size_t end) {
  const unsigned char c = s[i];
  if (c < 0x80 || end - i < 2) return c;
  uint32_t cp = c & (c >= 0xF0 ? 0x07 : c >= 0xE0 ? 0x0F : 0x1F);
  for (size_t j = i + 1; j < end; ++j) cp = (cp << 6) | (static_cast<unsigned char>(s[j]) & 0x3F);
  return cp;
}

bool IsPySpace(uint32_t cp) {
  return (cp >= 0x09 && cp <= 0x0D) || (cp >= 0x1C && cp <= 0x20) || cp == 0x85 || cp == 0xA0 ||
         cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 ||
         cp == 0x202F || cp == 0x205F || cp == 0x3000;
}

}  // namespace

std::vector<size_t> CodePointOffsets(absl::string_view s) {
  std::vector<size_t> out;
  out.reserve(s.size() + 1);
  for (size_t i = 0; i < s.size(); ++i) {
    if ((static_cast<unsigned char>(s[i]) & 0xC0) != 0x80) out.push_back(i);
  }
  out.push_back(s.size());
  return out;
}

std::string PyStrip(absl::string_view s, const std::optional<std::string>& chars, bool left,
                    bool right) {
  const std::vector<size_t> off = CodePointOffsets(s);
  std::vector<uint32_t> set;
  if (chars.has_value()) {
    const std::vector<size_t> c = CodePointOffsets(*chars);
    for (size_t i = 0; i + 1 < c.size(); ++i) set.push_back(DecodeAt(*chars, c[i], c[i + 1]));
  }
  auto strip = [&](size_t k) {
    const uint32_t cp = DecodeAt(s, off[k], off[k + 1]);
    if (!chars.has_value()) return IsPySpace(cp);
    for (uint32_t x : set) {
      if (x == cp) return true;
    }
    return false;
  };
  size_t b = 0, e = off.size() - 1;
  while (left && b < e && strip(b)) ++b;
  while (right && e > b && strip(e - 1)) --e;
  return std::string(s.substr(off[b], off[e] - off[b]));
}

std::vector<std::string> PySplit(absl::string_view s, const std::optional<std::string>& sep,
                                 int64_t maxsplit) {
  std::vector<std::string> out;
  if (sep.has_value()) {
    size_t start = 0;
    while (maxsplit < 0 || static_cast<int64_t>(out.size()) < maxsplit) {
      const size_t at = s.find(*sep, start);
      if (at == absl::string_view::npos) break;
      out.emplace_back(s.substr(start, at - start));
      start = at + sep->size();
    }
    out.emplace_back(s.substr(start));
    return out;
  }
  const std::vector<size_t> off = CodePointOffsets(s);
  auto space = [&](size_t k) { return IsPySpace(DecodeAt(s, off[k], off[k + 1])); };
  const size_t n = off.size() - 1;
  size_t k = 0;
  while (true) {
    while (k < n && space(k)) ++k;
    if (k == n) break;
    if (maxsplit >= 0 && static_cast<int64_t>(out.size()) == maxsplit) {
      size_t e = n;
      while (e > k && space(e - 1)) --e;
      out.emplace_back(s.substr(off[k], off[e] - off[k]));
      break;
    }
    size_t j = k;
    while (j < n && !space(j)) ++j;
    out.emplace_back(s.substr(off[k], off[j] - off[k]));
    k = j;
  }
  return out;
}

std::string PyReplace(absl::string_view s, absl::string_view old, absl::string_view repl,
                      int64_t count) {
  std::string out;
  if (old.empty()) {
    const std::vector<size_t> off = CodePointOffsets(s);
    int64_t done = 0;
    for (size_t k = 0; k < off.size(); ++k) {
      if (count < 0 || done < count) {
        out.append(repl.data(), repl.size());
        ++done;
      }
      if (k + 1 < off.size()) out.append(s.data() + off[k], off[k + 1] - off[k]);
    }
    return out;
  }
  size_t start = 0;
  int64_t done = 0;
  while (count < 0 || done < count) {
    const size_t at = s.find(old, start);
    if (at == absl::string_view::npos) break;
    out.append(s.data() + start, at - start);
    out.append(repl.data(), repl.size());
    start = at + old.size();
    ++done;
  }
  out.append(s.data() + start, s.size() - start);
  return out;
}

std::string PyUpper(absl::string_view s) {
  std::string out(s);
  for (char& c : out) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  return out;
}

std::string PyLower(absl::string_view s) {
  std::string out(s);
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

std::string PyCapitalize(absl::string_view s) {
  std::string out = PyLower(s);
  if (!out.empty()) out[0] = static_cast<char>(std::toupper(static_cast<unsigned char>(out[0])));
  return out;
}

std::string JinjaTitle(absl::string_view s) {
  std::string out;
  bool word_start = true;
  for (unsigned char c : s) {
    const bool sep = std::isspace(c) || c == '-' || c == '(' || c == '{' || c == '[' || c == '<';
    if (sep) {
      out += static_cast<char>(c);
      word_start = true;
    } else {
      out += static_cast<char>(word_start ? std::toupper(c) : std::tolower(c));
      word_start = false;
    }
  }
  return out;
}

std::string PyTitle(absl::string_view s) {
  std::string out;
  bool prev_cased = false;
  for (unsigned char c : s) {
    const bool alpha = std::isalpha(c);
    out += static_cast<char>(alpha ? (prev_cased ? std::tolower(c) : std::toupper(c)) : c);
    prev_cased = alpha || c >= 0x80;
  }
  return out;
}

}  // namespace hkv::jinja
