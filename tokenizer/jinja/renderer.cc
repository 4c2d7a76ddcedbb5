#include "tokenizer/jinja/renderer.h"

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

}  // namespace hkv::jinja
