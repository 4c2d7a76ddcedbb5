#pragma once
// The values a Jinja template computes with, modelled on the Python objects Jinja renders
// (transformers renders chat templates with Python's Jinja2, so str(), ==, truthiness and
// json.dumps follow Python's rules):
//
//   Undefined  a missing variable, key or attribute (renders as "", falsy; most other uses fail)
//   None, Bool, Int (int64), Float (double), String (UTF-8 bytes)
//   List       shared, immutable once built (tuples are lists too)
//   Dict       shared, insertion-ordered string keys (Python dicts keep order; tojson shows it)
//   Namespace  shared and mutable: the one object `{% set ns.x = ... %}` may change
//   Macro      a `{% macro %}` of the template being rendered (points into its AST)
//   Builtin    a global function (range, namespace, raise_exception, strftime_now, dict)
//
// Copying a Value is O(1) (strings, lists and dicts are shared). Values live only for one
// render, on the rendering thread; a Value is not thread-safe to share while a Namespace in it
// may change.

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/string_view.h"

namespace hkv::jinja {

struct MacroStmt;
class Value;
using ValueList = std::vector<Value>;

// Insertion-ordered map from string keys; lookups are linear (chat messages have a few keys).
struct ValueDict {
  std::vector<std::pair<std::string, Value>> entries;

  const Value* Find(absl::string_view key) const;
  // Replaces the value of `key`, or appends it.
  void Set(std::string key, Value value);
};

enum class ValueKind {
  kUndefined,
  kNone,
  kBool,
  kInt,
  kFloat,
  kString,
  kList,
  kDict,
  kNamespace,
  kMacro,
  kBuiltin,
};

class Value {
 public:
  Value() = default;  // Undefined.
  static Value Undefined(std::string hint);
  static Value None();
  static Value Bool(bool b);
  static Value Int(int64_t i);
  static Value Float(double f);
  static Value String(std::string s);
  static Value List(ValueList items);
  // A list that prints as a Python tuple ("(1, 2)"): what dict.items() yields.
  static Value Tuple(ValueList items);
  static Value Dict(ValueDict dict);
  static Value Namespace(ValueDict dict);
  static Value Macro(const MacroStmt* macro);
  static Value Builtin(std::string name);

  ValueKind kind() const { return kind_; }
  bool is_undefined() const { return kind_ == ValueKind::kUndefined; }
  bool is_none() const { return kind_ == ValueKind::kNone; }
  bool is_string() const { return kind_ == ValueKind::kString; }
  bool is_list() const { return kind_ == ValueKind::kList; }
  bool is_dict() const { return kind_ == ValueKind::kDict; }
  bool is_namespace() const { return kind_ == ValueKind::kNamespace; }
  bool is_tuple() const { return kind_ == ValueKind::kList && b_; }
  // Bool, Int or Float (Python's bool is an int).
  bool is_number() const;

  bool as_bool() const { return b_; }
  int64_t as_int() const { return i_; }
  double as_float() const { return f_; }
  // The number as a double. REQUIRES: is_number().
  double ToDouble() const;
  // REQUIRES: is_string().
  const std::string& str() const { return *str_; }
  // REQUIRES: is_list().
  const ValueList& list() const { return *list_; }
  // REQUIRES: is_dict() or is_namespace().
  const ValueDict& dict() const { return *dict_; }
  ValueDict& mutable_namespace() const { return *dict_; }
  const MacroStmt* macro() const { return macro_; }
  // The builtin's name, or what an Undefined is missing (for error messages).
  const std::string& name() const { return *str_; }

  // Python's bool(value).
  bool Truthy() const;
  // Python's ==, with Undefined equal only to Undefined.
  bool Equals(const Value& other) const;
  // Jinja's type name in errors ("str object", "dict object", ...).
  std::string TypeName() const;

 private:
  ValueKind kind_ = ValueKind::kUndefined;
  bool b_ = false;  // kBool: the value; kList: a tuple.
  int64_t i_ = 0;
  double f_ = 0;
  std::shared_ptr<const std::string> str_;
  std::shared_ptr<const ValueList> list_;
  std::shared_ptr<ValueDict> dict_;
  const MacroStmt* macro_ = nullptr;
};

// Python's repr() of a float ("1.0", "0.1", "1e+16").
std::string FloatRepr(double f);
// Python's str(value) as Jinja prints it ({{ value }}): Undefined is "", None "None", a list
// "['a', 1]".
std::string ToPythonStr(const Value& v);
// Python's repr(value).
std::string ToPythonRepr(const Value& v);

}  // namespace hkv::jinja
