#pragma once
// Renders a parsed template. Scopes follow Jinja: a for loop's body gets a fresh scope each
// iteration (so `set` inside a loop does not leak out; templates use namespace() for that), a
// macro call gets its own scope over the caller's, and `if` opens none.
//
// Not thread-safe; one Renderer per render. The AST is only read, so renders of one template
// may run concurrently, each with its own Renderer.

#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "tokenizer/jinja/ast.h"
#include "tokenizer/jinja/builtins.h"
#include "tokenizer/jinja/limits.h"
#include "tokenizer/jinja/value.h"

namespace hkv::jinja {

class Renderer {
 public:
  Renderer(const ValueDict& globals, const RenderLimits& limits);

  // Renders `body`. INVALID_ARGUMENT for the template's own errors (raise_exception, misuse
  // of an undefined value, type errors) with their message; RESOURCE_EXHAUSTED past a limit.
  absl::StatusOr<std::string> Render(const Body& body);

 private:
  enum class Flow { kNormal, kBreak, kContinue };
  using Scope = absl::flat_hash_map<std::string, Value>;

  absl::Status Exec(const Body& body, std::string* out);
  absl::Status ExecStmt(const Stmt& s, std::string* out);
  absl::Status ExecFor(const Stmt& s, std::string* out);
  absl::Status ExecSet(const Stmt& s, std::string* out);
  absl::Status Append(std::string* out, absl::string_view text);

  absl::StatusOr<Value> Eval(const Expr& e);
  absl::StatusOr<Value> EvalImpl(const Expr& e);
  absl::StatusOr<Value> EvalCall(const Expr& e);
  absl::StatusOr<Value> EvalBinary(const std::string& op, const Value& a, const Value& b);
  absl::StatusOr<CallArgs> EvalArgs(const Expr& e, size_t first);
  absl::StatusOr<Value> CallMacro(const MacroStmt& m, const CallArgs& args);
  Value Lookup(const std::string& name) const;

  RenderBudget budget_;
  std::vector<Scope> scopes_;  // [0]: globals; back(): the innermost.
  Flow flow_ = Flow::kNormal;
  int eval_depth_ = 0;
  static constexpr int kMaxEvalDepth = 512;
};

}  // namespace hkv::jinja
