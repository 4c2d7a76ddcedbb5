// Jinja's filters and tests (declared in builtins.h), with Jinja 3.1's argument names.
#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdlib>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "tokenizer/jinja/builtins.h"
#include "tokenizer/jinja/json.h"
#include "tokenizer/jinja/py_str.h"

namespace hkv::jinja {
namespace {

absl::Status TypeError(absl::string_view what) { return absl::InvalidArgumentError(what); }

// Jinja's soft_str: Undefined renders as "".
std::string Str(const Value& v) { return ToPythonStr(v); }

std::optional<std::string> OptStr(const CallArgs& a, absl::string_view name, size_t i) {
  const Value* v = a.Get(name, i);
  if (v == nullptr || v->is_none() || v->is_undefined()) return std::nullopt;
  return Str(*v);
}

int64_t IntArg(const CallArgs& a, absl::string_view name, size_t i, int64_t dflt) {
  const Value* v = a.Get(name, i);
  return v != nullptr && v->is_number() ? static_cast<int64_t>(v->ToDouble()) : dflt;
}

bool BoolArg(const CallArgs& a, absl::string_view name, size_t i, bool dflt) {
  const Value* v = a.Get(name, i);
  return v == nullptr ? dflt : v->Truthy();
}

absl::StatusOr<Value> Length(const Value& v) {
  switch (v.kind()) {
    case ValueKind::kUndefined:
      return Value::Int(0);
    case ValueKind::kString:
      return Value::Int(static_cast<int64_t>(CodePointOffsets(v.str()).size()) - 1);
    case ValueKind::kList:
      return Value::Int(static_cast<int64_t>(v.list().size()));
    case ValueKind::kDict:
      return Value::Int(static_cast<int64_t>(v.dict().entries.size()));
    default:
      return TypeError(absl::StrCat("object of type '", v.TypeName(), "' has no len()"));
  }
}

// environment.getitem along a dotted path ("function.name", "0").
Value AttrPath(const Value& item, const std::string& path) {
  Value cur = item;
  for (absl::string_view part : absl::StrSplit(path, '.')) {
    if (cur.is_undefined()) return cur;
    if (!part.empty() && std::all_of(part.begin(), part.end(), ::isdigit) && cur.is_list()) {
      auto v = GetItem(cur, Value::Int(std::atoll(std::string(part).c_str())));
      cur = v.ok() ? *v : Value::Undefined("no such element");
    } else {
      cur = GetAttr(cur, part);
    }
  }
  return cur;
}

// select / reject / selectattr / rejectattr: args after the test name go to the test.
absl::StatusOr<Value> SelectFilter(const Value& input, const CallArgs& args, bool by_attr,
                                   bool keep, RenderBudget* budget) {
  auto items = Iterate(input);
  if (!items.ok()) return items.status();
  size_t next = 0;
  std::string attr;
  if (by_attr) {
    if (args.args.empty()) return TypeError("selectattr/rejectattr need an attribute name");
    attr = Str(args.args[next++]);
  }
  std::string test;
  if (next < args.args.size()) test = Str(args.args[next++]);
  CallArgs test_args;
  test_args.args.assign(args.args.begin() + next, args.args.end());
  ValueList out;
  for (const Value& item : *items) {
    if (absl::Status s = budget->Step(); !s.ok()) return s;
    const Value subject = by_attr ? AttrPath(item, attr) : item;
    bool pass = subject.Truthy();
    if (!test.empty()) {
      auto t = ApplyTest(test, subject, test_args);
      if (!t.ok()) return t.status();
      pass = *t;
    }
    if (pass == keep) out.push_back(item);
  }
  return Value::List(std::move(out));
}

absl::StatusOr<Value> MapFilter(const Value& input, const CallArgs& args, RenderBudget* budget) {
  auto items = Iterate(input);
  if (!items.ok()) return items.status();
  ValueList out;
  const Value* attribute = args.Get("attribute", 99);
  const Value* dflt = args.Get("default", 99);
  CallArgs rest;
  if (attribute == nullptr) {
    if (args.args.empty()) return TypeError("map needs a filter name or attribute=");
    rest.args.assign(args.args.begin() + 1, args.args.end());
  }
  for (const Value& item : *items) {
    if (absl::Status s = budget->Step(); !s.ok()) return s;
    if (attribute != nullptr) {
      Value v = AttrPath(item, Str(*attribute));
      out.push_back(v.is_undefined() && dflt != nullptr ? *dflt : v);
      continue;
    }
    auto v = ApplyFilter(Str(args.args[0]), item, rest, budget);
    if (!v.ok()) return v.status();
    out.push_back(std::move(*v));
  }
  return Value::List(std::move(out));
}

absl::StatusOr<Value> JoinFilter(const Value& input, const CallArgs& args, RenderBudget* budget) {
  auto items = Iterate(input);
  if (!items.ok()) return items.status();
  const std::string sep = OptStr(args, "d", 0).value_or("");
  const std::optional<std::string> attr = OptStr(args, "attribute", 1);
  std::string out;
  for (size_t i = 0; i < items->size(); ++i) {
    if (absl::Status s = budget->Step(); !s.ok()) return s;
    if (i > 0) out += sep;
    out += Str(attr.has_value() ? AttrPath((*items)[i], *attr) : (*items)[i]);
    if (absl::Status s = budget->CheckSize(static_cast<int64_t>(out.size())); !s.ok()) return s;
  }
  if (absl::Status s = budget->Bytes(static_cast<int64_t>(out.size())); !s.ok()) return s;
  return Value::String(std::move(out));
}

absl::StatusOr<Value> TojsonFilter(const Value& input, const CallArgs& args, RenderBudget* budget) {
  JsonOptions o;
  if (const Value* indent = args.Get("indent", 0); indent != nullptr && !indent->is_none()) {
    if (!indent->is_number()) return TypeError("tojson indent must be an integer");
    o.indent = std::clamp<int64_t>(indent->as_int(), 0, 64);
    o.item_separator = ",";
  }
  if (const Value* sep = args.Get("separators", 2); sep != nullptr && sep->is_list()) {
    if (sep->list().size() != 2) return TypeError("tojson separators must be a pair");
    o.item_separator = Str(sep->list()[0]);
    o.key_separator = Str(sep->list()[1]);
  }
  o.ensure_ascii = BoolArg(args, "ensure_ascii", 1, false);
  o.sort_keys = BoolArg(args, "sort_keys", 3, false);
  auto json = ToJson(input, o, budget);
  if (!json.ok()) return json.status();
  return Value::String(std::move(*json));
}

// Jinja 3.1's indent(width=4, first=False, blank=False).
std::string Indent(const std::string& s, const std::string& pad, bool first, bool blank) {
  std::vector<std::string> lines = absl::StrSplit(s, '\n');
  std::string out;
  for (size_t i = 0; i < lines.size(); ++i) {
    if (i > 0) {
      out += '\n';
      if (blank || !lines[i].empty()) out += pad;
    }
    out += lines[i];
  }
  return first ? pad + out : out;
}

absl::StatusOr<Value> IntFilter(const Value& v, const CallArgs& args) {
  const int64_t dflt = IntArg(args, "default", 0, 0);
  if (v.is_number()) return Value::Int(static_cast<int64_t>(std::trunc(v.ToDouble())));
  if (v.is_string()) {
    std::string s = PyStrip(v.str(), std::nullopt, true, true);
    errno = 0;
    char* end = nullptr;
    const long long i = std::strtoll(s.c_str(), &end, 10);
    if (!s.empty() && *end == '\0' && errno == 0) return Value::Int(i);
    const double d = std::strtod(s.c_str(), &end);
    if (!s.empty() && *end == '\0' && std::isfinite(d)) return Value::Int(static_cast<int64_t>(d));
  }
  return Value::Int(dflt);
}

absl::StatusOr<Value> StringFilter(absl::string_view name, const Value& input,
                                   const CallArgs& args) {
  const std::string s = Str(input);
  if (name == "trim") return Value::String(PyStrip(s, OptStr(args, "chars", 0), true, true));
  if (name == "upper") return Value::String(PyUpper(s));
  if (name == "lower") return Value::String(PyLower(s));
  if (name == "title") return Value::String(JinjaTitle(s));
  if (name == "capitalize") return Value::String(PyCapitalize(s));
  if (name == "string") return input.is_string() ? input : Value::String(s);
  if (name == "replace") {
    return Value::String(PyReplace(s, OptStr(args, "old", 0).value_or(""),
                                   OptStr(args, "new", 1).value_or(""),
                                   IntArg(args, "count", 2, -1)));
  }
  std::string pad(4, ' ');
  if (const Value* w = args.Get("width", 0); w != nullptr) {
    pad = w->is_string() ? w->str() : std::string(std::clamp<int64_t>(w->as_int(), 0, 1024), ' ');
  }
  return Value::String(
      Indent(s, pad, BoolArg(args, "first", 1, false), BoolArg(args, "blank", 2, false)));
}

absl::StatusOr<Value> FirstLast(const Value& input, bool first) {
  auto items = Iterate(input);
  if (!items.ok()) return items.status();
  if (items->empty()) return Value::Undefined("No first item, sequence was empty.");
  return first ? items->front() : items->back();
}

}  // namespace

bool IsFilter(absl::string_view name) {
  static const char* const kNames[] = {
      "abs",    "capitalize", "count",      "d",          "default", "first",   "float",
      "indent", "int",        "items",      "join",       "last",    "length",  "list",
      "lower",  "map",        "reject",     "rejectattr", "replace", "reverse", "safe",
      "select", "selectattr", "string",     "title",      "tojson",  "trim",    "upper"};
  for (const char* n : kNames) {
    if (name == n) return true;
  }
  return false;
}

bool IsTest(absl::string_view name) {
  static const char* const kNames[] = {
      "defined", "undefined", "none",    "string", "mapping",  "boolean", "true",   "false",
      "number",  "integer",   "float",   "iterable", "sequence", "callable", "equalto", "eq",
      "==",      "sameas",    "ne",      "!=",     "lower",    "upper",   "in",     "odd",
      "even",    "divisibleby", "lt",    "gt",     "le",       "ge",      "<",      ">",
      "<=",      ">="};
  for (const char* n : kNames) {
    if (name == n) return true;
  }
  return false;
}

absl::StatusOr<Value> ApplyFilter(absl::string_view name, const Value& input, const CallArgs& args,
                                  RenderBudget* budget) {
  if (absl::Status s = budget->Step(); !s.ok()) return s;
  if (name == "default" || name == "d") {
    const bool boolean = BoolArg(args, "boolean", 1, false);
    const bool use_default = input.is_undefined() || (boolean && !input.Truthy());
    const Value* dflt = args.Get("default_value", 0);
    return use_default ? (dflt != nullptr ? *dflt : Value::String("")) : input;
  }
  if (name == "safe") return input;
  if (name == "length" || name == "count") return Length(input);
  if (name == "tojson") return TojsonFilter(input, args, budget);
  if (name == "join") return JoinFilter(input, args, budget);
  if (name == "select" || name == "reject") {
    return SelectFilter(input, args, false, name == "select", budget);
  }
  if (name == "selectattr" || name == "rejectattr") {
    return SelectFilter(input, args, true, name == "selectattr", budget);
  }
  if (name == "map") return MapFilter(input, args, budget);
  if (name == "first" || name == "last") return FirstLast(input, name == "first");
  if (name == "int") return IntFilter(input, args);
  if (name == "float") {
    if (input.is_number()) return Value::Float(input.ToDouble());
    char* end = nullptr;
    const std::string s = Str(input);
    const double d = std::strtod(s.c_str(), &end);
    return Value::Float(!s.empty() && *end == '\0' ? d : 0.0);
  }
  if (name == "abs") {
    if (input.kind() == ValueKind::kFloat) return Value::Float(std::fabs(input.as_float()));
    if (input.is_number()) return Value::Int(std::llabs(input.as_int()));
    return TypeError(absl::StrCat("bad operand type for abs(): '", input.TypeName(), "'"));
  }
  if (name == "list" || name == "reverse") {
    if (name == "reverse" && input.is_string()) {
      auto chars = Iterate(input);
      std::string out;
      for (auto it = chars->rbegin(); it != chars->rend(); ++it) out += it->str();
      return Value::String(std::move(out));
    }
    auto items = Iterate(input);
    if (!items.ok()) return items.status();
    if (name == "reverse") std::reverse(items->begin(), items->end());
    return Value::List(std::move(*items));
  }
  if (name == "items") {
    if (input.is_undefined()) return Value::List({});
    if (!input.is_dict()) return TypeError("items filter needs a mapping");
    ValueList out;
    for (const auto& [k, v] : input.dict().entries) {
      out.push_back(Value::Tuple({Value::String(k), v}));
    }
    return Value::List(std::move(out));
  }
  if (name == "trim" || name == "upper" || name == "lower" || name == "title" ||
      name == "capitalize" || name == "string" || name == "replace" || name == "indent") {
    auto out = StringFilter(name, input, args);
    if (out.ok() && out->is_string()) {
      if (absl::Status s = budget->Bytes(static_cast<int64_t>(out->str().size())); !s.ok()) {
        return s;
      }
    }
    return out;
  }
  return absl::InvalidArgumentError(absl::StrCat("no filter named '", name, "'"));
}

absl::StatusOr<bool> ApplyTest(absl::string_view name, const Value& v, const CallArgs& args) {
  const Value* arg = args.Get("value", 0);
  const Value none = Value::None();
  const Value& other = arg != nullptr ? *arg : none;
  if (name == "defined") return !v.is_undefined();
  if (name == "undefined") return v.is_undefined();
  if (name == "none") return v.is_none();
  if (name == "string") return v.is_string();
  if (name == "mapping") return v.is_dict();
  if (name == "boolean") return v.kind() == ValueKind::kBool;
  if (name == "true") return v.kind() == ValueKind::kBool && v.as_bool();
  if (name == "false") return v.kind() == ValueKind::kBool && !v.as_bool();
  if (name == "number") return v.is_number();
  if (name == "integer") return v.kind() == ValueKind::kInt;
  if (name == "float") return v.kind() == ValueKind::kFloat;
  if (name == "iterable") return v.is_list() || v.is_dict() || v.is_string() || v.is_undefined();
  if (name == "sequence") return v.is_list() || v.is_dict() || v.is_string() || v.is_undefined();
  if (name == "callable") return v.kind() == ValueKind::kMacro || v.kind() == ValueKind::kBuiltin;
  if (name == "equalto" || name == "eq" || name == "==" || name == "sameas") return v.Equals(other);
  if (name == "ne" || name == "!=") return !v.Equals(other);
  if (name == "lower") return v.is_string() && PyLower(v.str()) == v.str();
  if (name == "upper") return v.is_string() && PyUpper(v.str()) == v.str();
  if (name == "in") {
    if (other.is_list()) {
      for (const Value& x : other.list()) {
        if (x.Equals(v)) return true;
      }
      return false;
    }
    if (other.is_dict()) return v.is_string() && other.dict().Find(v.str()) != nullptr;
    if (other.is_string() && v.is_string()) return other.str().find(v.str()) != std::string::npos;
    return absl::InvalidArgumentError("the 'in' test needs a container");
  }
  if (name == "odd" || name == "even" || name == "divisibleby") {
    if (v.kind() != ValueKind::kInt && v.kind() != ValueKind::kBool) {
      return absl::InvalidArgumentError(absl::StrCat("the '", name, "' test needs an integer"));
    }
    if (name == "divisibleby") {
      if (!other.is_number() || other.as_int() == 0) {
        return absl::InvalidArgumentError("divisibleby needs a non-zero integer");
      }
      return v.as_int() % other.as_int() == 0;
    }
    return (v.as_int() % 2 != 0) == (name == "odd");
  }
  if (name == "lt" || name == "gt" || name == "le" || name == "ge" || name == "<" || name == ">" ||
      name == "<=" || name == ">=") {
    if (!v.is_number() || !other.is_number()) {
      return absl::InvalidArgumentError(absl::StrCat("the '", name, "' test needs numbers"));
    }
    const double a = v.ToDouble(), b = other.ToDouble();
    if (name == "lt" || name == "<") return a < b;
    if (name == "gt" || name == ">") return a > b;
    if (name == "le" || name == "<=") return a <= b;
    return a >= b;
  }
  return absl::InvalidArgumentError(absl::StrCat("no test named '", name, "'"));
}

}  // namespace hkv::jinja
