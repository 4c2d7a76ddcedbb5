#include "tokenizer/jinja/renderer.h"

#include <cmath>
#include <utility>

#include "absl/strings/str_cat.h"

namespace hkv::jinja {
namespace {

// Leaves a budget level when it goes out of scope.
class DepthScope {
 public:
  explicit DepthScope(RenderBudget* b) : b_(b) {}
  ~DepthScope() { b_->Leave(); }

 private:
  RenderBudget* b_;
};

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

Renderer::Renderer(const ValueDict& globals, const RenderLimits& limits) : budget_(limits) {
  scopes_.emplace_back();
  for (const std::string& name : BuiltinNames()) scopes_[0][name] = Value::Builtin(name);
  for (const auto& [k, v] : globals.entries) scopes_[0][k] = v;
  scopes_.emplace_back();  // The template's own top-level variables.
}

absl::StatusOr<std::string> Renderer::Render(const Body& body) {
  std::string out;
  if (absl::Status s = Exec(body, &out); !s.ok()) return s;
  return out;
}

Value Renderer::Lookup(const std::string& name) const {
  for (auto it = scopes_.rbegin(); it != scopes_.rend(); ++it) {
    auto found = it->find(name);
    if (found != it->end()) return found->second;
  }
  return Value::Undefined(absl::StrCat("'", name, "' is undefined"));
}

absl::Status Renderer::Append(std::string* out, absl::string_view text) {
  if (absl::Status s = budget_.CheckSize(static_cast<int64_t>(out->size() + text.size()));
      !s.ok()) {
    return absl::ResourceExhaustedError(absl::StrCat("chat template output is larger than ",
                                                     budget_.limits().max_output_bytes, " bytes"));
  }
  out->append(text.data(), text.size());
  return absl::OkStatus();
}

absl::Status Renderer::Exec(const Body& body, std::string* out) {
  for (const auto& stmt : body) {
    if (absl::Status s = ExecStmt(*stmt, out); !s.ok()) return s;
    if (flow_ != Flow::kNormal) return absl::OkStatus();
  }
  return absl::OkStatus();
}

absl::Status Renderer::ExecStmt(const Stmt& s, std::string* out) {
  if (absl::Status st = budget_.Step(); !st.ok()) return st;
  switch (s.kind) {
    case StmtKind::kText:
      return Append(out, s.text);
    case StmtKind::kOutput: {
      auto v = Eval(*s.expr);
      if (!v.ok()) return v.status();
      return Append(out, ToPythonStr(*v));
    }
    case StmtKind::kIf:
      for (size_t i = 0; i < s.bodies.size(); ++i) {
        if (i < s.conds.size()) {
          auto c = Eval(*s.conds[i]);
          if (!c.ok()) return c.status();
          if (!c->Truthy()) continue;
        }
        return Exec(s.bodies[i], out);
      }
      return absl::OkStatus();
    case StmtKind::kFor:
      return ExecFor(s, out);
    case StmtKind::kSet:
      return ExecSet(s, out);
    case StmtKind::kMacro:
      scopes_.back()[static_cast<const MacroStmt&>(s).macro_name] =
          Value::Macro(static_cast<const MacroStmt*>(&s));
      return absl::OkStatus();
    case StmtKind::kBreak:
      flow_ = Flow::kBreak;
      return absl::OkStatus();
    case StmtKind::kContinue:
      flow_ = Flow::kContinue;
      return absl::OkStatus();
    case StmtKind::kBlock:
      return Exec(s.bodies[0], out);
  }
  return absl::OkStatus();
}

absl::Status Renderer::ExecFor(const Stmt& s, std::string* out) {
  auto iterable = Eval(*s.expr);
  if (!iterable.ok()) return iterable.status();
  auto all = Iterate(*iterable);
  if (!all.ok()) return all.status();
  if (absl::Status st = budget_.Enter(); !st.ok()) return st;
  DepthScope depth(&budget_);
  auto bind = [&](Scope* scope, const Value& item) -> absl::Status {
    if (s.targets.size() == 1) {
      (*scope)[s.targets[0]] = item;
      return absl::OkStatus();
    }
    auto parts = Iterate(item);
    if (!parts.ok()) return parts.status();
    if (parts->size() != s.targets.size()) {
      return absl::InvalidArgumentError(
          absl::StrCat(parts->size() < s.targets.size() ? "not enough" : "too many",
                       " values to unpack (expected ", s.targets.size(), ")"));
    }
    for (size_t i = 0; i < parts->size(); ++i) (*scope)[s.targets[i]] = (*parts)[i];
    return absl::OkStatus();
  };
  ValueList items;
  if (s.conds.empty()) {
    items = std::move(*all);
  } else {
    for (const Value& item : *all) {
      if (absl::Status st = budget_.Step(); !st.ok()) return st;
      scopes_.emplace_back();
      absl::Status st = bind(&scopes_.back(), item);
      absl::StatusOr<Value> keep = st.ok() ? Eval(*s.conds[0]) : absl::StatusOr<Value>(st);
      scopes_.pop_back();
      if (!keep.ok()) return keep.status();
      if (keep->Truthy()) items.push_back(item);
    }
  }
  if (items.empty()) return Exec(s.bodies[1], out);
  const int64_t n = static_cast<int64_t>(items.size());
  for (int64_t i = 0; i < n; ++i) {
    if (absl::Status st = budget_.Step(); !st.ok()) return st;
    ValueDict loop;
    loop.Set("index", Value::Int(i + 1));
    loop.Set("index0", Value::Int(i));
    loop.Set("revindex", Value::Int(n - i));
    loop.Set("revindex0", Value::Int(n - i - 1));
    loop.Set("first", Value::Bool(i == 0));
    loop.Set("last", Value::Bool(i == n - 1));
    loop.Set("length", Value::Int(n));
    loop.Set("depth", Value::Int(1));
    loop.Set("depth0", Value::Int(0));
    if (i > 0) loop.Set("previtem", items[i - 1]);
    if (i + 1 < n) loop.Set("nextitem", items[i + 1]);
    scopes_.emplace_back();
    scopes_.back()["loop"] = Value::Dict(std::move(loop));
    absl::Status st = bind(&scopes_.back(), items[i]);
    if (st.ok()) st = Exec(s.bodies[0], out);
    scopes_.pop_back();
    if (!st.ok()) return st;
    const Flow f = flow_;
    flow_ = Flow::kNormal;
    if (f == Flow::kBreak) break;
  }
  return absl::OkStatus();
}

absl::Status Renderer::ExecSet(const Stmt& s, std::string* out) {
  Value value;
  if (s.block_set) {
    std::string text;
    if (absl::Status st = Exec(s.bodies[0], &text); !st.ok()) return st;
    if (absl::Status st = budget_.Bytes(static_cast<int64_t>(text.size())); !st.ok()) return st;
    value = Value::String(std::move(text));
  } else {
    auto v = Eval(*s.expr);
    if (!v.ok()) return v.status();
    value = std::move(*v);
  }
  if (s.targets.size() == 1) {
    scopes_.back()[s.targets[0]] = std::move(value);
    return absl::OkStatus();
  }
  const Value ns = Lookup(s.targets[0]);
  if (!ns.is_namespace()) {
    return absl::InvalidArgumentError("cannot assign attribute on non-namespace object");
  }
  ns.mutable_namespace().Set(s.targets[1], std::move(value));
  return absl::OkStatus();
}

absl::StatusOr<CallArgs> Renderer::EvalArgs(const Expr& e, size_t first) {
  CallArgs args;
  for (size_t i = first; i < e.args.size(); ++i) {
    auto v = Eval(*e.args[i]);
    if (!v.ok()) return v.status();
    args.args.push_back(std::move(*v));
  }
  for (const auto& [k, x] : e.kwargs) {
    auto v = Eval(*x);
    if (!v.ok()) return v.status();
    args.kwargs.emplace_back(k, std::move(*v));
  }
  return args;
}

absl::StatusOr<Value> Renderer::CallMacro(const MacroStmt& m, const CallArgs& args) {
  if (absl::Status st = budget_.Enter(); !st.ok()) return st;
  DepthScope depth(&budget_);
  if (args.args.size() > m.params.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("macro '", m.macro_name, "' takes at most ", m.params.size(), " arguments"));
  }
  Scope scope;
  for (size_t i = 0; i < m.params.size(); ++i) {
    const Value* v = args.Get(m.params[i], i);
    if (v != nullptr) {
      scope[m.params[i]] = *v;
    } else if (m.defaults[i] != nullptr) {
      auto d = Eval(*m.defaults[i]);
      if (!d.ok()) return d.status();
      scope[m.params[i]] = std::move(*d);
    } else {
      scope[m.params[i]] =
          Value::Undefined(absl::StrCat("parameter '", m.params[i], "' was not provided"));
    }
  }
  scopes_.push_back(std::move(scope));
  std::string text;
  absl::Status st = Exec(m.bodies[0], &text);
  scopes_.pop_back();
  flow_ = Flow::kNormal;
  if (!st.ok()) return st;
  if (absl::Status b = budget_.Bytes(static_cast<int64_t>(text.size())); !b.ok()) return b;
  return Value::String(std::move(text));
}

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
