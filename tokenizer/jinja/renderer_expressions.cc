// Renderer's expression evaluation (declared in renderer.h): calls, binary and comparison
// operators with Jinja's (Python's) semantics, and the dispatch over expression kinds.
#include <algorithm>
#include <cmath>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "tokenizer/jinja/renderer.h"

namespace hkv::jinja {
namespace {

absl::Status OperandError(const std::string& op, const Value& a, const Value& b) {
  if (a.is_undefined()) return UndefinedError(a);
  if (b.is_undefined()) return UndefinedError(b);
  return absl::InvalidArgumentError(absl::StrCat("unsupported operand type(s) for ", op, ": '",
                                                 a.TypeName(), "' and '", b.TypeName(), "'"));
}

bool IsIntLike(const Value& v) {
  return v.kind() == ValueKind::kInt || v.kind() == ValueKind::kBool;
}

absl::StatusOr<Value> Arithmetic(const std::string& op, const Value& a, const Value& b) {
  if (IsIntLike(a) && IsIntLike(b)) {
    const int64_t x = a.as_int(), y = b.as_int();
    int64_t r = 0;
    bool overflow = false;
    if (op == "+") overflow = __builtin_add_overflow(x, y, &r);
    if (op == "-") overflow = __builtin_sub_overflow(x, y, &r);
    if (op == "*") overflow = __builtin_mul_overflow(x, y, &r);
    if (op == "/") {
      if (y == 0) return absl::InvalidArgumentError("division by zero");
      return Value::Float(static_cast<double>(x) / static_cast<double>(y));
    }
    if (op == "//" || op == "%") {
      if (y == 0) return absl::InvalidArgumentError("integer division or modulo by zero");
      if (x == INT64_MIN && y == -1) return absl::InvalidArgumentError("integer overflow");
      int64_t q = x / y, m = x % y;
      if (m != 0 && ((m < 0) != (y < 0))) {
        --q;
        m += y;
      }
      r = op == "//" ? q : m;
    }
    if (op == "**") {
      if (y < 0) return Value::Float(std::pow(static_cast<double>(x), static_cast<double>(y)));
      r = 1;
      for (int64_t i = 0; i < y && !overflow; ++i) {
        overflow = __builtin_mul_overflow(r, x, &r);
        if (r == 0 || r == 1) break;
      }
      if (x == -1) r = y % 2 == 0 ? 1 : -1;
    }
    if (overflow) return absl::InvalidArgumentError("integer overflow");
    return Value::Int(r);
  }
  const double x = a.ToDouble(), y = b.ToDouble();
  if (op == "+") return Value::Float(x + y);
  if (op == "-") return Value::Float(x - y);
  if (op == "*") return Value::Float(x * y);
  if (op == "**") return Value::Float(std::pow(x, y));
  if (y == 0) return absl::InvalidArgumentError("float division by zero");
  if (op == "/") return Value::Float(x / y);
  if (op == "//") return Value::Float(std::floor(x / y));
  double m = std::fmod(x, y);
  if (m != 0 && ((m < 0) != (y < 0))) m += y;
  return Value::Float(m);
}

absl::StatusOr<int> Compare(const Value& a, const Value& b, const std::string& op) {
  if (a.is_number() && b.is_number()) {
    const double x = a.ToDouble(), y = b.ToDouble();
    return x < y ? -1 : x > y ? 1 : 0;
  }
  if (a.is_string() && b.is_string())
    return a.str().compare(b.str()) < 0 ? -1 : a.str() == b.str() ? 0 : 1;
  if (a.is_list() && b.is_list()) {
    const ValueList &x = a.list(), &y = b.list();
    for (size_t i = 0; i < x.size() && i < y.size(); ++i) {
      if (x[i].Equals(y[i])) continue;
      return Compare(x[i], y[i], op);
    }
    return x.size() < y.size() ? -1 : x.size() > y.size() ? 1 : 0;
  }
  if (a.is_undefined()) return UndefinedError(a);
  if (b.is_undefined()) return UndefinedError(b);
  return absl::InvalidArgumentError(absl::StrCat("'", op, "' not supported between instances of '",
                                                 a.TypeName(), "' and '", b.TypeName(), "'"));
}

absl::StatusOr<bool> Contains(const Value& container, const Value& item) {
  if (container.is_string()) {
    if (!item.is_string()) {
      return absl::InvalidArgumentError("'in <string>' requires string as left operand");
    }
    return container.str().find(item.str()) != std::string::npos;
  }
  if (container.is_dict() || container.is_namespace()) {
    return item.is_string() && container.dict().Find(item.str()) != nullptr;
  }
  if (container.is_list()) {
    for (const Value& v : container.list()) {
      if (v.Equals(item)) return true;
    }
    return false;
  }
  if (container.is_undefined()) return false;
  return absl::InvalidArgumentError(
      absl::StrCat("argument of type '", container.TypeName(), "' is not iterable"));
}

}  // namespace

absl::StatusOr<Value> Renderer::EvalCall(const Expr& e) {
  const Expr& callee = *e.args[0];
  auto args = EvalArgs(e, 1);
  if (!args.ok()) return args.status();
  if (callee.kind == ExprKind::kAttr) {
    auto obj = Eval(*callee.args[0]);
    if (!obj.ok()) return obj.status();
    if (obj->is_undefined()) return UndefinedError(*obj);
    auto r = CallMethod(*obj, callee.name, *args, &budget_);
    if (r.status().code() != absl::StatusCode::kNotFound) return r;
  }
  auto fn = Eval(callee);
  if (!fn.ok()) return fn.status();
  if (fn->kind() == ValueKind::kMacro) return CallMacro(*fn->macro(), *args);
  if (fn->kind() == ValueKind::kBuiltin) return CallBuiltin(fn->name(), *args, &budget_);
  if (fn->is_undefined()) return UndefinedError(*fn);
  return absl::InvalidArgumentError(absl::StrCat("'", fn->TypeName(), "' is not callable"));
}

absl::StatusOr<Value> Renderer::EvalBinary(const std::string& op, const Value& a, const Value& b) {
  if (op == "~") {
    std::string s = ToPythonStr(a) + ToPythonStr(b);
    if (absl::Status st = budget_.Bytes(static_cast<int64_t>(s.size())); !st.ok()) return st;
    return Value::String(std::move(s));
  }
  if (op == "==") return Value::Bool(a.Equals(b));
  if (op == "!=") return Value::Bool(!a.Equals(b));
  if (op == "<" || op == ">" || op == "<=" || op == ">=") {
    auto c = Compare(a, b, op);
    if (!c.ok()) return c.status();
    return Value::Bool(op == "<" ? *c < 0 : op == ">" ? *c > 0 : op == "<=" ? *c <= 0 : *c >= 0);
  }
  if (op == "in" || op == "not in") {
    auto c = Contains(b, a);
    if (!c.ok()) return c.status();
    return Value::Bool(*c == (op == "in"));
  }
  if (a.is_number() && b.is_number()) return Arithmetic(op, a, b);
  if (op == "+" && a.is_string() && b.is_string()) {
    if (absl::Status st = budget_.Bytes(static_cast<int64_t>(a.str().size() + b.str().size()));
        !st.ok()) {
      return st;
    }
    return Value::String(a.str() + b.str());
  }
  if (op == "+" && a.is_list() && b.is_list()) {
    if (absl::Status st = budget_.Step(static_cast<int64_t>(a.list().size() + b.list().size()));
        !st.ok()) {
      return st;
    }
    ValueList out = a.list();
    out.insert(out.end(), b.list().begin(), b.list().end());
    return Value::List(std::move(out));
  }
  if (op == "*" && (IsIntLike(a) || IsIntLike(b)) &&
      (a.is_string() || b.is_string() || a.is_list() || b.is_list())) {
    const Value& seq = IsIntLike(a) ? b : a;
    const int64_t times = std::max<int64_t>(0, (IsIntLike(a) ? a : b).as_int());
    const int64_t unit = seq.is_string() ? static_cast<int64_t>(seq.str().size())
                                         : static_cast<int64_t>(seq.list().size());
    if (unit > 0 && times > budget_.limits().max_output_bytes / unit) {
      return budget_.CheckSize(budget_.limits().max_output_bytes + 1);
    }
    if (seq.is_string()) {
      if (absl::Status st = budget_.Bytes(unit * times); !st.ok()) return st;
      std::string out;
      out.reserve(unit * times);
      for (int64_t i = 0; i < times; ++i) out += seq.str();
      return Value::String(std::move(out));
    }
    if (absl::Status st = budget_.Step(unit * times); !st.ok()) return st;
    ValueList out;
    for (int64_t i = 0; i < times; ++i) out.insert(out.end(), seq.list().begin(), seq.list().end());
    return Value::List(std::move(out));
  }
  return OperandError(op, a, b);
}

absl::StatusOr<Value> Renderer::Eval(const Expr& e) {
  if (absl::Status st = budget_.Step(); !st.ok()) return st;
  // Expressions nest at most kMaxParseDepth deep in one place, but macros recurse: bound the
  // whole evaluation stack so that no template can overflow the rendering thread's stack.
  if (eval_depth_ >= kMaxEvalDepth) {
    return absl::ResourceExhaustedError(
        absl::StrCat("chat template nested expressions past depth ", kMaxEvalDepth));
  }
  ++eval_depth_;
  absl::StatusOr<Value> v = EvalImpl(e);
  --eval_depth_;
  return v;
}

absl::StatusOr<Value> Renderer::EvalImpl(const Expr& e) {
  switch (e.kind) {
    case ExprKind::kLiteral:
      return e.value;
    case ExprKind::kName:
      return Lookup(e.name);
    case ExprKind::kList: {
      ValueList items;
      for (const auto& a : e.args) {
        auto v = Eval(*a);
        if (!v.ok()) return v.status();
        items.push_back(std::move(*v));
      }
      return e.name == "tuple" ? Value::Tuple(std::move(items)) : Value::List(std::move(items));
    }
    case ExprKind::kDict: {
      ValueDict d;
      for (size_t i = 0; i + 1 < e.args.size(); i += 2) {
        auto k = Eval(*e.args[i]);
        if (!k.ok()) return k.status();
        if (!k->is_string()) return absl::InvalidArgumentError("dict keys must be strings");
        auto v = Eval(*e.args[i + 1]);
        if (!v.ok()) return v.status();
        d.Set(k->str(), std::move(*v));
      }
      return Value::Dict(std::move(d));
    }
    case ExprKind::kAttr: {
      auto obj = Eval(*e.args[0]);
      if (!obj.ok()) return obj.status();
      if (obj->is_undefined()) return UndefinedError(*obj);
      return GetAttr(*obj, e.name);
    }
    case ExprKind::kItem: {
      auto obj = Eval(*e.args[0]);
      if (!obj.ok()) return obj.status();
      auto key = Eval(*e.args[1]);
      if (!key.ok()) return key.status();
      return GetItem(*obj, *key);
    }
    case ExprKind::kSlice: {
      Value parts[4];
      for (size_t i = 0; i < 4; ++i) {
        if (e.args[i] == nullptr) continue;
        auto v = Eval(*e.args[i]);
        if (!v.ok()) return v.status();
        parts[i] = std::move(*v);
      }
      return GetSlice(parts[0], parts[1], parts[2], parts[3]);
    }
    case ExprKind::kCall:
      return EvalCall(e);
    case ExprKind::kFilter: {
      auto input = Eval(*e.args[0]);
      if (!input.ok()) return input.status();
      auto args = EvalArgs(e, 1);
      if (!args.ok()) return args.status();
      return ApplyFilter(e.name, *input, *args, &budget_);
    }
    case ExprKind::kTest: {
      auto input = Eval(*e.args[0]);
      if (!input.ok()) return input.status();
      auto args = EvalArgs(e, 1);
      if (!args.ok()) return args.status();
      auto r = ApplyTest(e.name, *input, *args);
      if (!r.ok()) return r.status();
      return Value::Bool(*r != e.negated);
    }
    case ExprKind::kUnary: {
      auto v = Eval(*e.args[0]);
      if (!v.ok()) return v.status();
      if (e.name == "not") return Value::Bool(!v->Truthy());
      if (!v->is_number()) {
        if (v->is_undefined()) return UndefinedError(*v);
        return absl::InvalidArgumentError(
            absl::StrCat("bad operand type for unary ", e.name, ": '", v->TypeName(), "'"));
      }
      if (e.name == "+") return v->kind() == ValueKind::kFloat ? *v : Value::Int(v->as_int());
      if (v->kind() == ValueKind::kFloat) return Value::Float(-v->as_float());
      if (v->as_int() == INT64_MIN) return absl::InvalidArgumentError("integer overflow");
      return Value::Int(-v->as_int());
    }
    case ExprKind::kBinary: {
      auto a = Eval(*e.args[0]);
      if (!a.ok()) return a.status();
      auto b = Eval(*e.args[1]);
      if (!b.ok()) return b.status();
      return EvalBinary(e.name, *a, *b);
    }
    case ExprKind::kAnd:
    case ExprKind::kOr: {
      auto a = Eval(*e.args[0]);
      if (!a.ok()) return a.status();
      if (a->Truthy() == (e.kind == ExprKind::kOr)) return a;
      return Eval(*e.args[1]);
    }
    case ExprKind::kCondExpr: {
      auto c = Eval(*e.args[1]);
      if (!c.ok()) return c.status();
      if (c->Truthy()) return Eval(*e.args[0]);
      if (e.args[2] == nullptr) return Value::Undefined("the if expression had no else");
      return Eval(*e.args[2]);
    }
  }
  return absl::InternalError("unknown expression");
}

}  // namespace hkv::jinja
