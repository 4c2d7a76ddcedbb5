#pragma once
// Python's json.dumps as transformers' `tojson` filter calls it (ensure_ascii=False, no HTML
// escaping): ", " and ": " separators, or "," and ": " with an indent; dict keys in insertion
// order unless sort_keys. Thread-safe: pure function.

#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "tokenizer/jinja/limits.h"
#include "tokenizer/jinja/value.h"

namespace hkv::jinja {

struct JsonOptions {
  std::optional<int64_t> indent;
  std::string item_separator = ", ";
  std::string key_separator = ": ";
  bool sort_keys = false;
  bool ensure_ascii = false;
};

// INVALID_ARGUMENT for a value JSON cannot hold (Undefined, a macro, a namespace), as Python's
// TypeError; RESOURCE_EXHAUSTED past the budget's limits.
absl::StatusOr<std::string> ToJson(const Value& v, const JsonOptions& options,
                                   RenderBudget* budget);

}  // namespace hkv::jinja
