#pragma once
// The syntax tree of a parsed template. Built once by the parser, then read-only: rendering
// never changes it, so one tree serves concurrent renders.
//
//   Template := [Stmt]
//   Stmt     := Text | Output(expr) | If([cond, body]..., else) | For(targets, iter, filter, body,
//               else) | Set(target, expr or body) | Macro(name, params, body) | Break | Continue
//               | Block(body)   ({% generation %}, rendered as is)
//   Expr     := Literal | Name | List | Dict | Attr | Item | Slice | Call | Filter | Test | Unary
//               | Binary | And | Or | CondExpr

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "tokenizer/jinja/value.h"

namespace hkv::jinja {

enum class ExprKind {
  kLiteral,   // value
  kName,      // name
  kList,      // args (name "tuple" for a parenthesised tuple)
  kDict,      // args: key, value, key, value...
  kAttr,      // args[0].name
  kItem,      // args[0][args[1]]
  kSlice,     // args[0][args[1]:args[2]:args[3]] (null args are omitted bounds)
  kCall,      // args[0](args[1:], kwargs)
  kFilter,    // args[0] | name(args[1:], kwargs)
  kTest,      // args[0] is [not] name(args[1:])
  kUnary,     // name ("not", "-", "+") args[0]
  kBinary,    // args[0] name args[1]; name is an operator, "in" or "not in"
  kAnd,       // args[0] and args[1]
  kOr,        // args[0] or args[1]
  kCondExpr,  // args[0] if args[1] else args[2] (args[2] null: undefined)
};

struct Expr {
  ExprKind kind;
  int line = 0;
  Value value;
  std::string name;
  bool negated = false;  // `is not`.
  std::vector<std::unique_ptr<Expr>> args;
  std::vector<std::pair<std::string, std::unique_ptr<Expr>>> kwargs;
};

enum class StmtKind { kText, kOutput, kIf, kFor, kSet, kMacro, kBreak, kContinue, kBlock };

struct Stmt;
using Body = std::vector<std::unique_ptr<Stmt>>;

struct Stmt {
  StmtKind kind;
  int line = 0;
  std::string text;                          // kText.
  std::unique_ptr<Expr> expr;                // kOutput, kSet value, kFor iterable.
  std::vector<std::unique_ptr<Expr>> conds;  // kIf: if/elif conditions; kFor: the `if` filter.
  std::vector<Body> bodies;                  // kIf: one per cond, then else; kFor: body, else.
  std::vector<std::string> targets;          // kFor loop variables; kSet: name [, attribute].
  bool block_set = false;                    // kSet: {% set x %}...{% endset %} (bodies[0]).
};

// A macro's definition; a Value of kind Macro points at it.
struct MacroStmt : Stmt {
  std::string macro_name;
  std::vector<std::string> params;
  std::vector<std::unique_ptr<Expr>> defaults;  // One per param; null when it has none.
};

}  // namespace hkv::jinja
