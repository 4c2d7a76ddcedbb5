// Methods of strings and dicts, and the global functions (declared in builtins.h).
#include <ctime>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "tokenizer/jinja/builtins.h"
#include "tokenizer/jinja/py_str.h"

namespace hkv::jinja {
namespace {

std::optional<std::string> OptStrArg(const CallArgs& a, size_t i) {
  if (i >= a.args.size() || a.args[i].is_none()) return std::nullopt;
  return ToPythonStr(a.args[i]);
}

absl::StatusOr<bool> AffixTest(const std::string& s, const Value& affix, bool prefix) {
  auto test = [&](const Value& v) -> absl::StatusOr<bool> {
    if (!v.is_string()) return absl::InvalidArgumentError("startswith/endswith need a string");
    return prefix ? absl::StartsWith(s, v.str()) : absl::EndsWith(s, v.str());
  };
  if (!affix.is_list()) return test(affix);
  for (const Value& v : affix.list()) {
    auto r = test(v);
    if (!r.ok() || *r) return r;
  }
  return false;
}

absl::StatusOr<Value> StringMethod(const std::string& s, absl::string_view name, const CallArgs& a,
                                   RenderBudget* budget) {
  if (name == "strip" || name == "lstrip" || name == "rstrip") {
    return Value::String(PyStrip(s, OptStrArg(a, 0), name != "rstrip", name != "lstrip"));
  }
  if (name == "upper") return Value::String(PyUpper(s));
  if (name == "lower") return Value::String(PyLower(s));
  if (name == "title") return Value::String(PyTitle(s));
  if (name == "capitalize") return Value::String(PyCapitalize(s));
  if (name == "startswith" || name == "endswith") {
    if (a.args.empty()) return absl::InvalidArgumentError(absl::StrCat(name, " needs an argument"));
    auto r = AffixTest(s, a.args[0], name == "startswith");
    if (!r.ok()) return r.status();
    return Value::Bool(*r);
  }
  if (name == "split" || name == "rsplit") {
    const Value* max = a.Get("maxsplit", 1);
    const int64_t maxsplit = max != nullptr && max->is_number() ? max->as_int() : -1;
    if (name == "rsplit" && maxsplit >= 0) {
      return absl::InvalidArgumentError("rsplit with maxsplit is not supported");
    }
    const Value* sep = a.Get("sep", 0);
    std::optional<std::string> sep_str;
    if (sep != nullptr && !sep->is_none()) sep_str = ToPythonStr(*sep);
    if (sep_str.has_value() && sep_str->empty())
      return absl::InvalidArgumentError("empty separator");
    ValueList out;
    for (std::string& part : PySplit(s, sep_str, maxsplit))
      out.push_back(Value::String(std::move(part)));
    if (absl::Status st = budget->Step(static_cast<int64_t>(out.size())); !st.ok()) return st;
    return Value::List(std::move(out));
  }
  if (name == "replace") {
    if (a.args.size() < 2) return absl::InvalidArgumentError("replace needs two arguments");
    const int64_t count = a.args.size() > 2 && a.args[2].is_number() ? a.args[2].as_int() : -1;
    std::string out = PyReplace(s, ToPythonStr(a.args[0]), ToPythonStr(a.args[1]), count);
    if (absl::Status st = budget->Bytes(static_cast<int64_t>(out.size())); !st.ok()) return st;
    return Value::String(std::move(out));
  }
  if (name == "join") {
    if (a.args.empty()) return absl::InvalidArgumentError("join needs an argument");
    auto items = Iterate(a.args[0]);
    if (!items.ok()) return items.status();
    std::string out;
    for (size_t i = 0; i < items->size(); ++i) {
      if (!(*items)[i].is_string()) return absl::InvalidArgumentError("join needs strings");
      if (i > 0) out += s;
      out += (*items)[i].str();
      if (absl::Status st = budget->CheckSize(static_cast<int64_t>(out.size())); !st.ok())
        return st;
    }
    if (absl::Status st = budget->Bytes(static_cast<int64_t>(out.size())); !st.ok()) return st;
    return Value::String(std::move(out));
  }
  if (name == "find" || name == "count") {
    if (a.args.empty() || !a.args[0].is_string()) {
      return absl::InvalidArgumentError(absl::StrCat(name, " needs a string"));
    }
    const std::string& sub = a.args[0].str();
    if (name == "find") {
      const size_t at = s.find(sub);
      if (at == std::string::npos) return Value::Int(-1);
      return Value::Int(static_cast<int64_t>(CodePointOffsets(s.substr(0, at)).size()) - 1);
    }
    if (sub.empty()) return Value::Int(static_cast<int64_t>(CodePointOffsets(s).size()));
    int64_t n = 0;
    for (size_t at = s.find(sub); at != std::string::npos; at = s.find(sub, at + sub.size())) ++n;
    return Value::Int(n);
  }
  return absl::NotFoundError(name);
}

absl::StatusOr<Value> DictMethod(const Value& d, absl::string_view name, const CallArgs& a) {
  if (name == "get") {
    if (a.args.empty()) return absl::InvalidArgumentError("get needs a key");
    if (a.args[0].is_string()) {
      if (const Value* v = d.dict().Find(a.args[0].str())) return *v;
    }
    return a.args.size() > 1 ? a.args[1] : Value::None();
  }
  if (name == "items" || name == "keys" || name == "values") {
    ValueList out;
    for (const auto& [k, v] : d.dict().entries) {
      if (name == "items") out.push_back(Value::Tuple({Value::String(k), v}));
      if (name == "keys") out.push_back(Value::String(k));
      if (name == "values") out.push_back(v);
    }
    return Value::List(std::move(out));
  }
  return absl::NotFoundError(name);
}

absl::StatusOr<Value> Range(const CallArgs& a, RenderBudget* budget) {
  int64_t bounds[3] = {0, 0, 1};
  if (a.args.empty() || a.args.size() > 3)
    return absl::InvalidArgumentError("range needs 1 to 3 arguments");
  for (const Value& v : a.args) {
    if (v.kind() != ValueKind::kInt && v.kind() != ValueKind::kBool) {
      return absl::InvalidArgumentError("range arguments must be integers");
    }
  }
  if (a.args.size() == 1) {
    bounds[1] = a.args[0].as_int();
  } else {
    for (size_t i = 0; i < a.args.size(); ++i) bounds[i] = a.args[i].as_int();
  }
  if (bounds[2] == 0) return absl::InvalidArgumentError("range() arg 3 must not be zero");
  const long double len =
      bounds[2] > 0
          ? (static_cast<long double>(bounds[1]) - bounds[0] + bounds[2] - 1) / bounds[2]
          : (static_cast<long double>(bounds[0]) - bounds[1] - bounds[2] - 1) / -bounds[2];
  if (len > budget->limits().max_range) {
    return absl::ResourceExhaustedError(
        absl::StrCat("Range too big. The sandbox blocks ranges larger than MAX_RANGE (",
                     budget->limits().max_range, ")."));
  }
  ValueList out;
  for (int64_t i = bounds[0]; bounds[2] > 0 ? i < bounds[1] : i > bounds[1]; i += bounds[2]) {
    out.push_back(Value::Int(i));
  }
  if (absl::Status s = budget->Step(static_cast<int64_t>(out.size())); !s.ok()) return s;
  return Value::List(std::move(out));
}

}  // namespace

absl::StatusOr<Value> CallMethod(const Value& obj, absl::string_view name, const CallArgs& args,
                                 RenderBudget* budget) {
  if (absl::Status s = budget->Step(); !s.ok()) return s;
  if (obj.is_string()) return StringMethod(obj.str(), name, args, budget);
  if (obj.is_dict()) return DictMethod(obj, name, args);
  return absl::NotFoundError(name);
}

const std::vector<std::string>& BuiltinNames() {
  static const auto* names =
      new std::vector<std::string>{"range", "namespace", "dict", "raise_exception", "strftime_now"};
  return *names;
}

absl::StatusOr<Value> CallBuiltin(absl::string_view name, const CallArgs& args,
                                  RenderBudget* budget) {
  if (absl::Status s = budget->Step(); !s.ok()) return s;
  if (name == "raise_exception") {
    return absl::InvalidArgumentError(args.args.empty() ? "chat template raised an exception"
                                                        : ToPythonStr(args.args[0]));
  }
  if (name == "range") return Range(args, budget);
  if (name == "namespace" || name == "dict") {
    ValueDict d;
    if (!args.args.empty()) {
      if (!args.args[0].is_dict())
        return absl::InvalidArgumentError(absl::StrCat(name, " takes a mapping"));
      d = args.args[0].dict();
    }
    for (const auto& [k, v] : args.kwargs) d.Set(k, v);
    return name == "dict" ? Value::Dict(std::move(d)) : Value::Namespace(std::move(d));
  }
  if (name == "strftime_now") {
    if (args.args.empty() || !args.args[0].is_string() || args.args[0].str().size() > 256) {
      return absl::InvalidArgumentError("strftime_now needs a format string (at most 256 bytes)");
    }
    const std::time_t now = std::time(nullptr);
    std::tm tm;
    localtime_r(&now, &tm);
    char buf[1024];
    const size_t n = std::strftime(buf, sizeof(buf), args.args[0].str().c_str(), &tm);
    return Value::String(std::string(buf, n));
  }
  return absl::InvalidArgumentError(absl::StrCat("no function named '", name, "'"));
}

}  // namespace hkv::jinja
