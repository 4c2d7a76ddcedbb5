#include "tokenizer/jinja/json.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"

namespace hkv::jinja {
namespace {

void AppendJsonString(const std::string& s, bool ensure_ascii, std::string* out) {
  static const char kHex[] = "0123456789abcdef";
  *out += '"';
  for (size_t i = 0; i < s.size(); ++i) {
    const unsigned char c = s[i];
    switch (c) {
      case '"':
        *out += "\\\"";
        break;
      case '\\':
        *out += "\\\\";
        break;
      case '\n':
        *out += "\\n";
        break;
      case '\r':
        *out += "\\r";
        break;
      case '\t':
        *out += "\\t";
        break;
      case '\b':
        *out += "\\b";
        break;
      case '\f':
        *out += "\\f";
        break;
      default:
        if (c < 0x20 || (ensure_ascii && c >= 0x7f)) {
          if (c >= 0x80) {
            // Decode one UTF-8 character and write it as \uXXXX (surrogate pairs above BMP).
            size_t len = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : 2;
            uint32_t cp = c & (len == 4 ? 0x07 : len == 3 ? 0x0F : 0x1F);
            for (size_t j = 1; j < len && i + j < s.size(); ++j) {
              cp = (cp << 6) | (static_cast<unsigned char>(s[i + j]) & 0x3F);
            }
            i += len - 1;
            auto u = [&](uint32_t x) {
              *out += "\\u";
              for (int sh = 12; sh >= 0; sh -= 4) *out += kHex[(x >> sh) & 15];
            };
            if (cp >= 0x10000) {
              cp -= 0x10000;
              u(0xD800 + (cp >> 10));
              u(0xDC00 + (cp & 0x3FF));
            } else {
              u(cp);
            }
          } else {
            *out += "\\u00";
            *out += kHex[c >> 4];
            *out += kHex[c & 15];
          }
        } else {
          *out += static_cast<char>(c);
        }
    }
  }
  *out += '"';
}

class Writer {
 public:
  Writer(const JsonOptions& o, RenderBudget* b) : o_(o), budget_(b) {}

  absl::Status Write(const Value& v, int level) {
    if (absl::Status s = budget_->Step(); !s.ok()) return s;
    if (absl::Status s = budget_->CheckSize(static_cast<int64_t>(out_.size())); !s.ok()) return s;
    switch (v.kind()) {
      case ValueKind::kNone:
        out_ += "null";
        return absl::OkStatus();
      case ValueKind::kBool:
        out_ += v.as_bool() ? "true" : "false";
        return absl::OkStatus();
      case ValueKind::kInt:
        absl::StrAppend(&out_, v.as_int());
        return absl::OkStatus();
      case ValueKind::kFloat: {
        const double f = v.as_float();
        out_ += std::isnan(f)   ? "NaN"
                : std::isinf(f) ? (f > 0 ? "Infinity" : "-Infinity")
                                : FloatRepr(f);
        return absl::OkStatus();
      }
      case ValueKind::kString:
        AppendJsonString(v.str(), o_.ensure_ascii, &out_);
        return absl::OkStatus();
      case ValueKind::kList:
        return WriteList(v.list(), level);
      case ValueKind::kDict:
        return WriteDict(v.dict(), level);
      default:
        return absl::InvalidArgumentError(
            absl::StrCat("Object of type ", v.TypeName(), " is not JSON serializable"));
    }
  }

  std::string Take() { return std::move(out_); }

 private:
  void Newline(int level) {
    if (!o_.indent.has_value()) return;
    out_ += '\n';
    out_.append(static_cast<size_t>(std::max<int64_t>(0, *o_.indent)) * level, ' ');
  }

  absl::Status WriteList(const ValueList& items, int level) {
    if (items.empty()) {
      out_ += "[]";
      return absl::OkStatus();
    }
    out_ += '[';
    for (size_t i = 0; i < items.size(); ++i) {
      if (i > 0) out_ += o_.item_separator;
      Newline(level + 1);
      if (absl::Status s = Write(items[i], level + 1); !s.ok()) return s;
    }
    Newline(level);
    out_ += ']';
    return absl::OkStatus();
  }

  absl::Status WriteDict(const ValueDict& dict, int level) {
    if (dict.entries.empty()) {
      out_ += "{}";
      return absl::OkStatus();
    }
    std::vector<const std::pair<std::string, Value>*> entries;
    for (const auto& e : dict.entries) entries.push_back(&e);
    if (o_.sort_keys) {
      std::stable_sort(entries.begin(), entries.end(),
                       [](auto* a, auto* b) { return a->first < b->first; });
    }
    out_ += '{';
    for (size_t i = 0; i < entries.size(); ++i) {
      if (i > 0) out_ += o_.item_separator;
      Newline(level + 1);
      AppendJsonString(entries[i]->first, o_.ensure_ascii, &out_);
      out_ += o_.key_separator;
      if (absl::Status s = Write(entries[i]->second, level + 1); !s.ok()) return s;
    }
    Newline(level);
    out_ += '}';
    return absl::OkStatus();
  }

  const JsonOptions& o_;
  RenderBudget* budget_;
  std::string out_;
};

}  // namespace

absl::StatusOr<std::string> ToJson(const Value& v, const JsonOptions& options,
                                   RenderBudget* budget) {
  Writer w(options, budget);
  if (absl::Status s = w.Write(v, 0); !s.ok()) return s;
  std::string out = w.Take();
  if (absl::Status s = budget->Bytes(static_cast<int64_t>(out.size())); !s.ok()) return s;
  return out;
}

}  // namespace hkv::jinja
