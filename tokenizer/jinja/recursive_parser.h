#pragma once
// Parser: the recursive-descent parser behind Parse() (parser.h). A cursor over the lexer's
// tokens, the statement productions (defined in parser.cc) and the expression productions
// (expression_parser.cc). Internal to tokenizer/jinja.
//
// Not thread-safe: one Parser per Parse() call.

#include <algorithm>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "tokenizer/jinja/ast.h"
#include "tokenizer/jinja/lexer.h"
#include "tokenizer/jinja/parser.h"

namespace hkv::jinja {

using ExprPtr = std::unique_ptr<Expr>;

class Parser {
 public:
  explicit Parser(const std::vector<Token>& tokens) : t_(tokens) {}

  absl::StatusOr<Body> ParseTemplate() {
    Body body;
    std::string end;
    absl::Status s = ParseBody({}, &body, &end);
    if (!s.ok()) return s;
    return body;
  }

 private:
  // Depth guard for the recursive productions.
  struct DepthGuard {
    explicit DepthGuard(int* d) : d(d) { ++*d; }
    ~DepthGuard() { --*d; }
    int* d;
  };

  const Token& Peek(size_t ahead = 0) const { return t_[std::min(pos_ + ahead, t_.size() - 1)]; }
  const Token& Next() { return t_[std::min(pos_++, t_.size() - 1)]; }
  bool IsOp(absl::string_view op, size_t ahead = 0) const {
    return Peek(ahead).type == TokenType::kOperator && Peek(ahead).text == op;
  }
  bool IsName(absl::string_view name, size_t ahead = 0) const {
    return Peek(ahead).type == TokenType::kName && Peek(ahead).text == name;
  }
  absl::Status Error(absl::string_view what) const {
    return absl::InvalidArgumentError(
        absl::StrCat("template syntax error, line ", Peek().line, ": ", what));
  }
  absl::Status Expect(absl::string_view op) {
    if (!IsOp(op)) return Error(absl::StrCat("expected '", op, "'"));
    ++pos_;
    return absl::OkStatus();
  }
  absl::Status ExpectBlockEnd() {
    if (Peek().type != TokenType::kBlockEnd) return Error("expected end of statement '%}'");
    ++pos_;
    return absl::OkStatus();
  }
  absl::StatusOr<std::string> ExpectName() {
    if (Peek().type != TokenType::kName) return Error("expected a name");
    return Next().text;
  }
  ExprPtr Make(ExprKind kind) {
    auto e = std::make_unique<Expr>();
    e->kind = kind;
    e->line = Peek().line;
    return e;
  }

  // Parses statements until a block tag named in `ends` (consumed up to its name; `*end` says
  // which) or the end of the template (only when `ends` is empty).
  absl::Status ParseBody(std::initializer_list<absl::string_view> ends, Body* body,
                         std::string* end);

  absl::StatusOr<std::unique_ptr<Stmt>> ParseTag(const std::string& name, int line);
  absl::StatusOr<std::unique_ptr<Stmt>> ParseIf(int line);
  absl::StatusOr<std::unique_ptr<Stmt>> ParseFor(int line);
  absl::StatusOr<std::unique_ptr<Stmt>> ParseSet(int line);
  absl::StatusOr<std::unique_ptr<Stmt>> ParseMacro(int line);

  // ---- Expressions, lowest precedence first.
  absl::StatusOr<ExprPtr> ParseExpression(bool with_condexpr);

  using Level = absl::StatusOr<ExprPtr> (Parser::*)();
  absl::StatusOr<ExprPtr> BinaryChain(Level next, std::initializer_list<absl::string_view> ops,
                                      ExprKind kind, bool name_ops);
  absl::StatusOr<ExprPtr> ParseOr();
  absl::StatusOr<ExprPtr> ParseAnd();
  absl::StatusOr<ExprPtr> ParseNot();
  absl::StatusOr<ExprPtr> ParseCompare();
  absl::StatusOr<ExprPtr> ParseMath1();
  absl::StatusOr<ExprPtr> ParseConcat();
  absl::StatusOr<ExprPtr> ParseMath2();
  absl::StatusOr<ExprPtr> ParsePow();
  absl::StatusOr<ExprPtr> ParseUnaryFiltered() { return ParseUnary(true); }
  absl::StatusOr<ExprPtr> ParseUnary(bool with_filter);
  absl::StatusOr<ExprPtr> ParsePrimary();
  absl::StatusOr<ExprPtr> ParseParenthesized();

  // Comma-separated expressions up to `close` (consumed); a trailing comma is allowed.
  absl::Status ParseList(absl::string_view close, std::vector<ExprPtr>* out);
  absl::StatusOr<ExprPtr> ParseDict();
  absl::StatusOr<ExprPtr> ParsePostfix(ExprPtr node);
  absl::StatusOr<ExprPtr> ParseSubscript(ExprPtr node);

  // `(args, name=value...)` after `callee` (args[0] of the result).
  absl::StatusOr<ExprPtr> ParseCall(ExprPtr callee, ExprKind kind, std::string name = "");
  absl::StatusOr<ExprPtr> ParseFilterChain(ExprPtr node);

  const std::vector<Token>& t_;
  size_t pos_ = 0;
  int depth_ = 0;
};

}  // namespace hkv::jinja
