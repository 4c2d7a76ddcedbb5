#include "tokenizer/jinja/value.h"

#include <charconv>
#include <cmath>
#include <cstdlib>

#include "absl/strings/str_cat.h"

namespace hkv::jinja {

const Value* ValueDict::Find(absl::string_view key) const {
  for (const auto& [k, v] : entries) {
    if (k == key) return &v;
  }
  return nullptr;
}

void ValueDict::Set(std::string key, Value value) {
  for (auto& [k, v] : entries) {
    if (k == key) {
      v = std::move(value);
      return;
    }
  }
  entries.emplace_back(std::move(key), std::move(value));
}

Value Value::Undefined(std::string hint) {
  Value v;
  v.str_ = std::make_shared<const std::string>(std::move(hint));
  return v;
}
Value Value::None() {
  Value v;
  v.kind_ = ValueKind::kNone;
  return v;
}
Value Value::Bool(bool b) {
  Value v;
  v.kind_ = ValueKind::kBool;
  v.b_ = b;
  v.i_ = b ? 1 : 0;
  v.f_ = v.i_;
  return v;
}
Value Value::Int(int64_t i) {
  Value v;
  v.kind_ = ValueKind::kInt;
  v.i_ = i;
  v.f_ = static_cast<double>(i);
  return v;
}
Value Value::Float(double f) {
  Value v;
  v.kind_ = ValueKind::kFloat;
  v.f_ = f;
  return v;
}
Value Value::String(std::string s) {
  Value v;
  v.kind_ = ValueKind::kString;
  v.str_ = std::make_shared<const std::string>(std::move(s));
  return v;
}
Value Value::List(ValueList items) {
  Value v;
  v.kind_ = ValueKind::kList;
  v.list_ = std::make_shared<const ValueList>(std::move(items));
  return v;
}
Value Value::Tuple(ValueList items) {
  Value v = List(std::move(items));
  v.b_ = true;
  return v;
}
Value Value::Dict(ValueDict dict) {
  Value v;
  v.kind_ = ValueKind::kDict;
  v.dict_ = std::make_shared<ValueDict>(std::move(dict));
  return v;
}
Value Value::Namespace(ValueDict dict) {
  Value v = Dict(std::move(dict));
  v.kind_ = ValueKind::kNamespace;
  return v;
}
Value Value::Macro(const MacroStmt* macro) {
  Value v;
  v.kind_ = ValueKind::kMacro;
  v.macro_ = macro;
  return v;
}
Value Value::Builtin(std::string name) {
  Value v;
  v.kind_ = ValueKind::kBuiltin;
  v.str_ = std::make_shared<const std::string>(std::move(name));
  return v;
}

bool Value::is_number() const {
  return kind_ == ValueKind::kBool || kind_ == ValueKind::kInt || kind_ == ValueKind::kFloat;
}

double Value::ToDouble() const { return kind_ == ValueKind::kFloat ? f_ : static_cast<double>(i_); }

bool Value::Truthy() const {
  switch (kind_) {
    case ValueKind::kUndefined:
    case ValueKind::kNone:
      return false;
    case ValueKind::kBool:
      return b_;
    case ValueKind::kInt:
      return i_ != 0;
    case ValueKind::kFloat:
      return f_ != 0;
    case ValueKind::kString:
      return !str_->empty();
    case ValueKind::kList:
      return !list_->empty();
    case ValueKind::kDict:
      return !dict_->entries.empty();
    default:
      return true;
  }
}

bool Value::Equals(const Value& o) const {
  if (is_number() && o.is_number()) {
    if (kind_ != ValueKind::kFloat && o.kind_ != ValueKind::kFloat) return i_ == o.i_;
    return ToDouble() == o.ToDouble();
  }
  if (kind_ != o.kind_) return false;
  switch (kind_) {
    case ValueKind::kUndefined:
    case ValueKind::kNone:
      return true;
    case ValueKind::kString:
      return *str_ == *o.str_;
    case ValueKind::kList: {
      if (list_->size() != o.list_->size()) return false;
      for (size_t i = 0; i < list_->size(); ++i) {
        if (!(*list_)[i].Equals((*o.list_)[i])) return false;
      }
      return true;
    }
    case ValueKind::kDict: {
      if (dict_->entries.size() != o.dict_->entries.size()) return false;
      for (const auto& [k, v] : dict_->entries) {
        const Value* other = o.dict_->Find(k);
        if (other == nullptr || !v.Equals(*other)) return false;
      }
      return true;
    }
    case ValueKind::kNamespace:
      return dict_ == o.dict_;
    case ValueKind::kMacro:
      return macro_ == o.macro_;
    case ValueKind::kBuiltin:
      return *str_ == *o.str_;
    default:
      return false;
  }
}

std::string Value::TypeName() const {
  switch (kind_) {
    case ValueKind::kUndefined:
      return "Undefined";
    case ValueKind::kNone:
      return "NoneType object";
    case ValueKind::kBool:
      return "bool object";
    case ValueKind::kInt:
      return "int object";
    case ValueKind::kFloat:
      return "float object";
    case ValueKind::kString:
      return "str object";
    case ValueKind::kList:
      return "list object";
    case ValueKind::kDict:
      return "dict object";
    case ValueKind::kNamespace:
      return "Namespace object";
    default:
      return "function object";
  }
}

std::string FloatRepr(double f) {
  if (std::isnan(f)) return "nan";
  if (std::isinf(f)) return f > 0 ? "inf" : "-inf";
  char buf[64];
  // Shortest round-trip digits in scientific form: [-]d[.ddd]e[+-]XX.
  auto [end, ec] = std::to_chars(buf, buf + sizeof(buf), f, std::chars_format::scientific);
  std::string sci(buf, end);
  const size_t e = sci.find('e');
  const int exp = std::atoi(sci.c_str() + e + 1);
  std::string sign = sci[0] == '-' ? "-" : "";
  std::string digits;
  for (size_t i = sign.size(); i < e; ++i) {
    if (sci[i] != '.') digits += sci[i];
  }
  if (exp < -4 || exp >= 16) {
    std::string mant = digits.substr(0, 1);
    if (digits.size() > 1) absl::StrAppend(&mant, ".", digits.substr(1));
    const int a = std::abs(exp);
    return absl::StrCat(sign, mant, "e", exp < 0 ? "-" : "+", a < 10 ? "0" : "", a);
  }
  if (exp < 0) return absl::StrCat(sign, "0.", std::string(-exp - 1, '0'), digits);
  const size_t int_len = static_cast<size_t>(exp) + 1;
  if (digits.size() <= int_len) {
    return absl::StrCat(sign, digits, std::string(int_len - digits.size(), '0'), ".0");
  }
  return absl::StrCat(sign, digits.substr(0, int_len), ".", digits.substr(int_len));
}

namespace {

std::string StringRepr(const std::string& s) {
  const bool has_single = s.find('\'') != std::string::npos;
  const bool has_double = s.find('"') != std::string::npos;
  const char quote = has_single && !has_double ? '"' : '\'';
  std::string out(1, quote);
  for (unsigned char c : s) {
    if (c == quote || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '\r') {
      out += "\\r";
    } else if (c == '\t') {
      out += "\\t";
    } else if (c < 0x20 || c == 0x7f) {
      static const char kHex[] = "0123456789abcdef";
      out += "\\x";
      out += kHex[c >> 4];
      out += kHex[c & 15];
    } else {
      out += static_cast<char>(c);
    }
  }
  out += quote;
  return out;
}

}  // namespace

std::string ToPythonRepr(const Value& v) {
  switch (v.kind()) {
    case ValueKind::kString:
      return StringRepr(v.str());
    case ValueKind::kList: {
      std::string out = v.is_tuple() ? "(" : "[";
      for (size_t i = 0; i < v.list().size(); ++i) {
        if (i > 0) out += ", ";
        out += ToPythonRepr(v.list()[i]);
      }
      if (v.is_tuple() && v.list().size() == 1) out += ",";
      return out + (v.is_tuple() ? ")" : "]");
    }
    case ValueKind::kDict: {
      std::string out = "{";
      bool first = true;
      for (const auto& [k, item] : v.dict().entries) {
        if (!first) out += ", ";
        first = false;
        absl::StrAppend(&out, StringRepr(k), ": ", ToPythonRepr(item));
      }
      return out + "}";
    }
    default:
      return ToPythonStr(v);
  }
}

std::string ToPythonStr(const Value& v) {
  switch (v.kind()) {
    case ValueKind::kUndefined:
      return "";
    case ValueKind::kNone:
      return "None";
    case ValueKind::kBool:
      return v.as_bool() ? "True" : "False";
    case ValueKind::kInt:
      return absl::StrCat(v.as_int());
    case ValueKind::kFloat:
      return FloatRepr(v.as_float());
    case ValueKind::kString:
      return v.str();
    case ValueKind::kNamespace:
      return "<Namespace>";
    case ValueKind::kMacro:
    case ValueKind::kBuiltin:
      return "<function>";
    default:
      return ToPythonRepr(v);
  }
}

}  // namespace hkv::jinja
