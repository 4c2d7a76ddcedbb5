// Attribute, item and slice access, iteration and Undefined errors (declared in builtins.h).
#include <algorithm>

#include "absl/strings/str_cat.h"
#include "tokenizer/jinja/builtins.h"
#include "tokenizer/jinja/py_str.h"

namespace hkv::jinja {

const Value* CallArgs::Get(absl::string_view name, size_t index) const {
  for (const auto& [k, v] : kwargs) {
    if (k == name) return &v;
  }
  return index < args.size() ? &args[index] : nullptr;
}

absl::Status UndefinedError(const Value& undefined) {
  return absl::InvalidArgumentError(undefined.name());
}

Value GetAttr(const Value& obj, absl::string_view name) {
  if (obj.is_dict() || obj.is_namespace()) {
    if (const Value* v = obj.dict().Find(name)) return *v;
  }
  return Value::Undefined(absl::StrCat("'", obj.TypeName(), "' has no attribute '", name, "'"));
}

absl::StatusOr<Value> GetItem(const Value& obj, const Value& key) {
  if (obj.is_undefined()) return UndefinedError(obj);
  if (key.is_string()) {
    if (obj.is_dict() || obj.is_namespace()) return GetAttr(obj, key.str());
  }
  if ((obj.is_list() || obj.is_string()) && key.is_number() && key.kind() != ValueKind::kFloat) {
    if (obj.is_list()) {
      const int64_t n = static_cast<int64_t>(obj.list().size());
      int64_t i = key.as_int() < 0 ? key.as_int() + n : key.as_int();
      if (i >= 0 && i < n) return obj.list()[i];
    } else {
      const std::vector<size_t> off = CodePointOffsets(obj.str());
      const int64_t n = static_cast<int64_t>(off.size()) - 1;
      int64_t i = key.as_int() < 0 ? key.as_int() + n : key.as_int();
      if (i >= 0 && i < n) return Value::String(obj.str().substr(off[i], off[i + 1] - off[i]));
    }
    return Value::Undefined(
        absl::StrCat("'", obj.TypeName(), "' has no element ", ToPythonStr(key)));
  }
  if (obj.is_dict()) {
    return Value::Undefined(
        absl::StrCat("'", obj.TypeName(), "' has no attribute ", ToPythonRepr(key)));
  }
  return absl::InvalidArgumentError(
      absl::StrCat("cannot index a ", obj.TypeName(), " with a ", key.TypeName()));
}

namespace {

absl::StatusOr<int64_t> SliceBound(const Value& v, int64_t dflt) {
  if (v.is_undefined() || v.is_none()) return dflt;
  if (!v.is_number() || v.kind() == ValueKind::kFloat) {
    return absl::InvalidArgumentError("slice indices must be integers or None");
  }
  return v.as_int();
}

// Python's slice.indices(n) then the visited indices.
absl::StatusOr<std::vector<int64_t>> SliceIndices(int64_t n, const Value& start_v,
                                                  const Value& stop_v, const Value& step_v) {
  auto step = SliceBound(step_v, 1);
  if (!step.ok()) return step.status();
  if (*step == 0) return absl::InvalidArgumentError("slice step cannot be zero");
  const bool fwd = *step > 0;
  auto start = SliceBound(start_v, fwd ? 0 : n - 1);
  auto stop = SliceBound(stop_v, fwd ? n : -n - 1);
  if (!start.ok()) return start.status();
  if (!stop.ok()) return stop.status();
  auto clamp = [&](int64_t i, bool is_stop) {
    if (i < 0) i += n;
    if (fwd) return std::clamp<int64_t>(i, 0, n);
    return std::clamp<int64_t>(i, -1, n - 1);
  };
  int64_t b = (start_v.is_undefined() || start_v.is_none()) ? *start : clamp(*start, false);
  int64_t e = (stop_v.is_undefined() || stop_v.is_none()) ? *stop : clamp(*stop, true);
  if (!fwd && (stop_v.is_undefined() || stop_v.is_none())) e = -1;
  std::vector<int64_t> out;
  for (int64_t i = b; fwd ? i < e : i > e; i += *step) out.push_back(i);
  return out;
}

}  // namespace

absl::StatusOr<Value> GetSlice(const Value& obj, const Value& start, const Value& stop,
                               const Value& step) {
  if (obj.is_undefined()) return UndefinedError(obj);
  if (obj.is_list()) {
    auto idx = SliceIndices(static_cast<int64_t>(obj.list().size()), start, stop, step);
    if (!idx.ok()) return idx.status();
    ValueList out;
    out.reserve(idx->size());
    for (int64_t i : *idx) out.push_back(obj.list()[i]);
    return Value::List(std::move(out));
  }
  if (obj.is_string()) {
    const std::vector<size_t> off = CodePointOffsets(obj.str());
    auto idx = SliceIndices(static_cast<int64_t>(off.size()) - 1, start, stop, step);
    if (!idx.ok()) return idx.status();
    std::string out;
    for (int64_t i : *idx) out.append(obj.str(), off[i], off[i + 1] - off[i]);
    return Value::String(std::move(out));
  }
  return absl::InvalidArgumentError(absl::StrCat("'", obj.TypeName(), "' is not subscriptable"));
}

absl::StatusOr<ValueList> Iterate(const Value& v) {
  switch (v.kind()) {
    case ValueKind::kUndefined:
      return ValueList();
    case ValueKind::kList:
      return v.list();
    case ValueKind::kDict: {
      ValueList keys;
      for (const auto& [k, item] : v.dict().entries) keys.push_back(Value::String(k));
      return keys;
    }
    case ValueKind::kString: {
      const std::vector<size_t> off = CodePointOffsets(v.str());
      ValueList chars;
      for (size_t i = 0; i + 1 < off.size(); ++i) {
        chars.push_back(Value::String(v.str().substr(off[i], off[i + 1] - off[i])));
      }
      return chars;
    }
    default:
      return absl::InvalidArgumentError(absl::StrCat("'", v.TypeName(), "' is not iterable"));
  }
}

}  // namespace hkv::jinja
