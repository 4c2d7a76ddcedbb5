#include "tokenizer/utf8.h"

#include <cstdint>

namespace hkv {
namespace {

enum class Kind {
  kChar,       // A well-formed character of `len` bytes.
  kInvalid,    // A maximal ill-formed subpart of `len` bytes (1 to 3).
  kTruncated,  // All `len` bytes left are a proper prefix of a well-formed character.
};

struct Scan {
  Kind kind;
  size_t len;
};

// Classifies the sequence at the start of `s` (non-empty) by Unicode Table 3-7: the lead byte
// fixes the length and the range of the second byte; later bytes are 80..BF.
Scan ScanOne(std::string_view s) {
  const uint8_t b0 = static_cast<uint8_t>(s[0]);
  if (b0 < 0x80) return {Kind::kChar, 1};
  size_t need = 0;
  uint8_t lo = 0x80, hi = 0xBF;  // Range of the second byte.
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    need = 2;
  } else if (b0 >= 0xE0 && b0 <= 0xEF) {
    need = 3;
    if (b0 == 0xE0) lo = 0xA0;  // Overlong below U+0800.
    if (b0 == 0xED) hi = 0x9F;  // Surrogates D800..DFFF.
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    need = 4;
    if (b0 == 0xF0) lo = 0x90;  // Overlong below U+10000.
    if (b0 == 0xF4) hi = 0x8F;  // Past U+10FFFF.
  } else {
    return {Kind::kInvalid, 1};  // 80..C1 (continuation or overlong lead) and F5..FF.
  }
  for (size_t i = 1; i < need; ++i) {
    if (i == s.size()) return {Kind::kTruncated, i};
    const uint8_t b = static_cast<uint8_t>(s[i]);
    if (b < (i == 1 ? lo : 0x80) || b > (i == 1 ? hi : 0xBF)) return {Kind::kInvalid, i};
  }
  return {Kind::kChar, need};
}

// Appends the repair of `in` to `out` and returns how many bytes at its end are a truncated
// character (not appended). With `final`, such a tail is replaced too and 0 is returned.
size_t Repair(std::string_view in, bool final, std::string* out) {
  out->reserve(out->size() + in.size());
  size_t i = 0;
  while (i < in.size()) {
    // ASCII runs are most text: copy them without classifying byte by byte.
    size_t ascii = i;
    while (ascii < in.size() && static_cast<uint8_t>(in[ascii]) < 0x80) ++ascii;
    out->append(in.data() + i, ascii - i);
    i = ascii;
    if (i == in.size()) break;
    const Scan scan = ScanOne(in.substr(i));
    if (scan.kind == Kind::kTruncated && !final) return in.size() - i;
    if (scan.kind == Kind::kChar) {
      out->append(in.data() + i, scan.len);
    } else {
      out->append(kUtf8Replacement);
    }
    i += scan.len;
  }
  return 0;
}

}  // namespace

std::string Utf8Sanitizer::Push(std::string_view bytes) {
  std::string out;
  if (held_.empty()) {
    const size_t keep = Repair(bytes, /*final=*/false, &out);
    held_.assign(bytes.substr(bytes.size() - keep));
    return out;
  }
  std::string in = std::move(held_);
  in.append(bytes);
  const size_t keep = Repair(in, /*final=*/false, &out);
  held_.assign(in, in.size() - keep, keep);
  return out;
}

std::string Utf8Sanitizer::Flush() {
  std::string out;
  Repair(held_, /*final=*/true, &out);
  held_.clear();
  return out;
}

std::string SanitizeUtf8(std::string_view bytes) {
  std::string out;
  Repair(bytes, /*final=*/true, &out);
  return out;
}

bool IsValidUtf8(std::string_view bytes) {
  size_t i = 0;
  while (i < bytes.size()) {
    const Scan scan = ScanOne(bytes.substr(i));
    if (scan.kind != Kind::kChar) return false;
    i += scan.len;
  }
  return true;
}

}  // namespace hkv
