#pragma once
// What a template can call by name: filters (`x | trim`), tests (`x is defined`), methods of
// strings and dicts (`s.strip()`, `d.items()`), and the globals transformers provides
// (raise_exception, strftime_now) plus Jinja's (range, namespace, dict). Python's semantics
// (transformers renders with Python's Jinja2); errors are INVALID_ARGUMENT with Jinja's or
// Python's wording, and every item visited or string built is charged to the budget.
//
// Thread-safe: pure functions of their arguments and the budget.

#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "tokenizer/jinja/limits.h"
#include "tokenizer/jinja/value.h"

namespace hkv::jinja {

struct CallArgs {
  std::vector<Value> args;
  std::vector<std::pair<std::string, Value>> kwargs;

  // The keyword argument `name`, else positional argument `index`, else nullptr.
  const Value* Get(absl::string_view name, size_t index) const;
};

// `obj.name`: a dict's or namespace's item, else Undefined saying what is missing.
Value GetAttr(const Value& obj, absl::string_view name);
// `obj[key]`: list/string index (negative from the end), dict key; Undefined when missing.
absl::StatusOr<Value> GetItem(const Value& obj, const Value& key);
// `obj[start:stop:step]` on a list or string (unset bounds are Undefined or None).
absl::StatusOr<Value> GetSlice(const Value& obj, const Value& start, const Value& stop,
                               const Value& step);
// The items `for x in v` visits: a list's items, a dict's keys, a string's characters;
// Undefined gives none. INVALID_ARGUMENT for what Python cannot iterate.
absl::StatusOr<ValueList> Iterate(const Value& v);

absl::StatusOr<Value> ApplyFilter(absl::string_view name, const Value& input, const CallArgs& args,
                                  RenderBudget* budget);
absl::StatusOr<bool> ApplyTest(absl::string_view name, const Value& input, const CallArgs& args);
// `obj.name(args)` for a string or dict method. NOT_FOUND when `obj` has no such method (the
// caller then looks for a callable item).
absl::StatusOr<Value> CallMethod(const Value& obj, absl::string_view name, const CallArgs& args,
                                 RenderBudget* budget);
// A global function (Value::Builtin). raise_exception's error carries the template's message.
absl::StatusOr<Value> CallBuiltin(absl::string_view name, const CallArgs& args,
                                  RenderBudget* budget);
// Whether a filter or test of that name exists (the parser refuses unknown ones, as Jinja does
// when it compiles a template).
bool IsFilter(absl::string_view name);
bool IsTest(absl::string_view name);
// The names of the global functions, for the renderer's initial scope.
const std::vector<std::string>& BuiltinNames();

// The error Jinja raises when an Undefined is used as a value: its message.
absl::Status UndefinedError(const Value& undefined);

}  // namespace hkv::jinja
