#include "tokenizer/jinja/parser.h"

#include <initializer_list>
#include <utility>

#include "absl/strings/str_cat.h"
#include "tokenizer/jinja/builtins.h"
#include "absl/strings/string_view.h"

namespace hkv::jinja {
namespace {

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
                         std::string* end) {
    DepthGuard g(&depth_);
    if (depth_ > kMaxParseDepth) return Error("blocks nested too deeply");
    while (true) {
      const Token& tok = Peek();
      if (tok.type == TokenType::kEnd) {
        if (ends.size() == 0) return absl::OkStatus();
        return Error(absl::StrCat("unexpected end of template, expected '", *ends.begin(), "'"));
      }
      if (tok.type == TokenType::kText) {
        auto s = std::make_unique<Stmt>();
        s->kind = StmtKind::kText;
        s->text = Next().text;
        body->push_back(std::move(s));
        continue;
      }
      if (tok.type == TokenType::kVarBegin) {
        ++pos_;
        auto s = std::make_unique<Stmt>();
        s->kind = StmtKind::kOutput;
        s->line = tok.line;
        auto e = ParseExpression(true);
        if (!e.ok()) return e.status();
        s->expr = std::move(*e);
        if (Peek().type != TokenType::kVarEnd) return Error("expected end of print statement '}}'");
        ++pos_;
        body->push_back(std::move(s));
        continue;
      }
      if (tok.type != TokenType::kBlockBegin) return Error("unexpected token");
      ++pos_;
      if (Peek().type != TokenType::kName) return Error("expected a tag name");
      const std::string name = Peek().text;
      for (absl::string_view e : ends) {
        if (name == e) {
          ++pos_;
          *end = name;
          return absl::OkStatus();
        }
      }
      ++pos_;
      auto stmt = ParseTag(name, tok.line);
      if (!stmt.ok()) return stmt.status();
      body->push_back(std::move(*stmt));
    }
  }

  absl::StatusOr<std::unique_ptr<Stmt>> ParseTag(const std::string& name, int line) {
    if (name == "if") return ParseIf(line);
    if (name == "for") return ParseFor(line);
    if (name == "set") return ParseSet(line);
    if (name == "macro") return ParseMacro(line);
    if (name == "break" || name == "continue") {
      auto s = std::make_unique<Stmt>();
      s->kind = name == "break" ? StmtKind::kBreak : StmtKind::kContinue;
      s->line = line;
      if (absl::Status st = ExpectBlockEnd(); !st.ok()) return st;
      return s;
    }
    if (name == "generation") {
      auto s = std::make_unique<Stmt>();
      s->kind = StmtKind::kBlock;
      if (absl::Status st = ExpectBlockEnd(); !st.ok()) return st;
      s->bodies.emplace_back();
      std::string end;
      if (absl::Status st = ParseBody({"endgeneration"}, &s->bodies[0], &end); !st.ok()) return st;
      if (absl::Status st = ExpectBlockEnd(); !st.ok()) return st;
      return s;
    }
    return absl::InvalidArgumentError(
        absl::StrCat("template syntax error, line ", line, ": unsupported tag '", name, "'"));
  }

  absl::StatusOr<std::unique_ptr<Stmt>> ParseIf(int line) {
    auto s = std::make_unique<Stmt>();
    s->kind = StmtKind::kIf;
    s->line = line;
    while (true) {
      auto cond = ParseExpression(true);
      if (!cond.ok()) return cond.status();
      s->conds.push_back(std::move(*cond));
      if (absl::Status st = ExpectBlockEnd(); !st.ok()) return st;
      s->bodies.emplace_back();
      std::string end;
      if (absl::Status st = ParseBody({"elif", "else", "endif"}, &s->bodies.back(), &end);
          !st.ok()) {
        return st;
      }
      if (end == "elif") continue;
      if (end == "else") {
        if (absl::Status st = ExpectBlockEnd(); !st.ok()) return st;
        s->bodies.emplace_back();
        if (absl::Status st = ParseBody({"endif"}, &s->bodies.back(), &end); !st.ok()) return st;
      }
      if (absl::Status st = ExpectBlockEnd(); !st.ok()) return st;
      return s;
    }
  }

  absl::StatusOr<std::unique_ptr<Stmt>> ParseFor(int line) {
    auto s = std::make_unique<Stmt>();
    s->kind = StmtKind::kFor;
    s->line = line;
    const bool paren = IsOp("(");
    if (paren) ++pos_;
    while (true) {
      auto n = ExpectName();
      if (!n.ok()) return n.status();
      s->targets.push_back(*n);
      if (!IsOp(",")) break;
      ++pos_;
    }
    if (paren) {
      if (absl::Status st = Expect(")"); !st.ok()) return st;
    }
    if (!IsName("in")) return Error("expected 'in' in for loop");
    ++pos_;
    auto iter = ParseExpression(false);
    if (!iter.ok()) return iter.status();
    s->expr = std::move(*iter);
    if (IsName("if")) {
      ++pos_;
      auto cond = ParseExpression(true);
      if (!cond.ok()) return cond.status();
      s->conds.push_back(std::move(*cond));
    }
    if (IsName("recursive")) return Error("recursive for loops are not supported");
    if (absl::Status st = ExpectBlockEnd(); !st.ok()) return st;
    s->bodies.resize(2);
    std::string end;
    if (absl::Status st = ParseBody({"else", "endfor"}, &s->bodies[0], &end); !st.ok()) return st;
    if (end == "else") {
      if (absl::Status st = ExpectBlockEnd(); !st.ok()) return st;
      if (absl::Status st = ParseBody({"endfor"}, &s->bodies[1], &end); !st.ok()) return st;
    }
    if (absl::Status st = ExpectBlockEnd(); !st.ok()) return st;
    return s;
  }

  absl::StatusOr<std::unique_ptr<Stmt>> ParseSet(int line) {
    auto s = std::make_unique<Stmt>();
    s->kind = StmtKind::kSet;
    s->line = line;
    auto n = ExpectName();
    if (!n.ok()) return n.status();
    s->targets.push_back(*n);
    if (IsOp(".")) {
      ++pos_;
      auto attr = ExpectName();
      if (!attr.ok()) return attr.status();
      s->targets.push_back(*attr);
    }
    if (Peek().type == TokenType::kBlockEnd && s->targets.size() == 1) {
      ++pos_;
      s->block_set = true;
      s->bodies.emplace_back();
      std::string end;
      if (absl::Status st = ParseBody({"endset"}, &s->bodies[0], &end); !st.ok()) return st;
      if (absl::Status st = ExpectBlockEnd(); !st.ok()) return st;
      return s;
    }
    if (absl::Status st = Expect("="); !st.ok()) return st;
    auto value = ParseExpression(true);
    if (!value.ok()) return value.status();
    s->expr = std::move(*value);
    if (absl::Status st = ExpectBlockEnd(); !st.ok()) return st;
    return s;
  }

  absl::StatusOr<std::unique_ptr<Stmt>> ParseMacro(int line) {
    auto m = std::make_unique<MacroStmt>();
    m->kind = StmtKind::kMacro;
    m->line = line;
    auto n = ExpectName();
    if (!n.ok()) return n.status();
    m->macro_name = *n;
    if (absl::Status st = Expect("("); !st.ok()) return st;
    while (!IsOp(")")) {
      auto p = ExpectName();
      if (!p.ok()) return p.status();
      m->params.push_back(*p);
      ExprPtr def;
      if (IsOp("=")) {
        ++pos_;
        auto d = ParseExpression(true);
        if (!d.ok()) return d.status();
        def = std::move(*d);
      }
      m->defaults.push_back(std::move(def));
      if (!IsOp(",")) break;
      ++pos_;
    }
    if (absl::Status st = Expect(")"); !st.ok()) return st;
    if (absl::Status st = ExpectBlockEnd(); !st.ok()) return st;
    m->bodies.emplace_back();
    std::string end;
    if (absl::Status st = ParseBody({"endmacro"}, &m->bodies[0], &end); !st.ok()) return st;
    if (Peek().type == TokenType::kName) ++pos_;  // {% endmacro name %}
    if (absl::Status st = ExpectBlockEnd(); !st.ok()) return st;
    return std::unique_ptr<Stmt>(std::move(m));
  }

  // ---- Expressions, lowest precedence first.

  absl::StatusOr<ExprPtr> ParseExpression(bool with_condexpr) {
    DepthGuard g(&depth_);
    if (depth_ > kMaxParseDepth) return Error("expression nested too deeply");
    auto e = ParseOr();
    if (!e.ok() || !with_condexpr) return e;
    ExprPtr left = std::move(*e);
    while (IsName("if")) {
      ++pos_;
      auto cond = ParseOr();
      if (!cond.ok()) return cond.status();
      ExprPtr alt;
      if (IsName("else")) {
        ++pos_;
        auto a = ParseExpression(true);
        if (!a.ok()) return a.status();
        alt = std::move(*a);
      }
      ExprPtr c = Make(ExprKind::kCondExpr);
      c->args.push_back(std::move(left));
      c->args.push_back(std::move(*cond));
      c->args.push_back(std::move(alt));
      left = std::move(c);
    }
    return left;
  }

  using Level = absl::StatusOr<ExprPtr> (Parser::*)();

  absl::StatusOr<ExprPtr> BinaryChain(Level next, std::initializer_list<absl::string_view> ops,
                                      ExprKind kind, bool name_ops) {
    auto e = (this->*next)();
    if (!e.ok()) return e;
    ExprPtr left = std::move(*e);
    while (true) {
      std::string op;
      for (absl::string_view o : ops) {
        if (name_ops ? IsName(o) : IsOp(o)) op = std::string(o);
      }
      if (op.empty()) return left;
      ++pos_;
      auto r = (this->*next)();
      if (!r.ok()) return r;
      ExprPtr b = Make(kind);
      b->name = op;
      b->args.push_back(std::move(left));
      b->args.push_back(std::move(*r));
      left = std::move(b);
    }
  }

  absl::StatusOr<ExprPtr> ParseOr() {
    return BinaryChain(&Parser::ParseAnd, {"or"}, ExprKind::kOr, true);
  }
  absl::StatusOr<ExprPtr> ParseAnd() {
    return BinaryChain(&Parser::ParseNot, {"and"}, ExprKind::kAnd, true);
  }
  absl::StatusOr<ExprPtr> ParseNot() {
    if (!IsName("not")) return ParseCompare();
    DepthGuard g(&depth_);
    if (depth_ > kMaxParseDepth) return Error("expression nested too deeply");
    ExprPtr u = Make(ExprKind::kUnary);
    ++pos_;
    u->name = "not";
    auto e = ParseNot();
    if (!e.ok()) return e;
    u->args.push_back(std::move(*e));
    return u;
  }
  absl::StatusOr<ExprPtr> ParseCompare() {
    auto e = ParseMath1();
    if (!e.ok()) return e;
    ExprPtr left = std::move(*e);
    while (true) {
      std::string op;
      if (Peek().type == TokenType::kOperator &&
          (Peek().text == "==" || Peek().text == "!=" || Peek().text == "<" || Peek().text == ">" ||
           Peek().text == "<=" || Peek().text == ">=")) {
        op = Next().text;
      } else if (IsName("in")) {
        op = "in";
        ++pos_;
      } else if (IsName("not") && IsName("in", 1)) {
        op = "not in";
        pos_ += 2;
      } else {
        return left;
      }
      auto r = ParseMath1();
      if (!r.ok()) return r;
      ExprPtr b = Make(ExprKind::kBinary);
      b->name = op;
      b->args.push_back(std::move(left));
      b->args.push_back(std::move(*r));
      left = std::move(b);
    }
  }
  absl::StatusOr<ExprPtr> ParseMath1() {
    return BinaryChain(&Parser::ParseConcat, {"+", "-"}, ExprKind::kBinary, false);
  }
  absl::StatusOr<ExprPtr> ParseConcat() {
    return BinaryChain(&Parser::ParseMath2, {"~"}, ExprKind::kBinary, false);
  }
  absl::StatusOr<ExprPtr> ParseMath2() {
    return BinaryChain(&Parser::ParsePow, {"*", "/", "//", "%"}, ExprKind::kBinary, false);
  }
  absl::StatusOr<ExprPtr> ParsePow() {
    return BinaryChain(&Parser::ParseUnaryFiltered, {"**"}, ExprKind::kBinary, false);
  }
  absl::StatusOr<ExprPtr> ParseUnaryFiltered() { return ParseUnary(true); }

  absl::StatusOr<ExprPtr> ParseUnary(bool with_filter) {
    DepthGuard g(&depth_);
    if (depth_ > kMaxParseDepth) return Error("expression nested too deeply");
    ExprPtr node;
    if (IsOp("-") || IsOp("+")) {
      node = Make(ExprKind::kUnary);
      node->name = Next().text;
      auto e = ParseUnary(false);
      if (!e.ok()) return e;
      node->args.push_back(std::move(*e));
    } else {
      auto e = ParsePrimary();
      if (!e.ok()) return e;
      node = std::move(*e);
    }
    auto p = ParsePostfix(std::move(node));
    if (!p.ok() || !with_filter) return p;
    return ParseFilterChain(std::move(*p));
  }

  absl::StatusOr<ExprPtr> ParsePrimary() {
    const Token& tok = Peek();
    switch (tok.type) {
      case TokenType::kName: {
        ++pos_;
        ExprPtr e = Make(ExprKind::kLiteral);
        if (tok.text == "true" || tok.text == "True") {
          e->value = Value::Bool(true);
        } else if (tok.text == "false" || tok.text == "False") {
          e->value = Value::Bool(false);
        } else if (tok.text == "none" || tok.text == "None") {
          e->value = Value::None();
        } else {
          e->kind = ExprKind::kName;
          e->name = tok.text;
        }
        return e;
      }
      case TokenType::kString: {
        std::string s;
        while (Peek().type == TokenType::kString) s += Next().text;
        ExprPtr e = Make(ExprKind::kLiteral);
        e->value = Value::String(std::move(s));
        return e;
      }
      case TokenType::kInt:
      case TokenType::kFloat: {
        ExprPtr e = Make(ExprKind::kLiteral);
        e->value =
            tok.type == TokenType::kInt ? Value::Int(tok.int_value) : Value::Float(tok.float_value);
        ++pos_;
        return e;
      }
      default:
        break;
    }
    if (IsOp("(")) return ParseParenthesized();
    if (IsOp("[")) {
      ++pos_;
      ExprPtr e = Make(ExprKind::kList);
      if (absl::Status s = ParseList("]", &e->args); !s.ok()) return s;
      return e;
    }
    if (IsOp("{")) return ParseDict();
    return Error(absl::StrCat("unexpected '", tok.text.empty() ? "end of tag" : tok.text, "'"));
  }

  absl::StatusOr<ExprPtr> ParseParenthesized() {
    ++pos_;
    if (IsOp(")")) {
      ++pos_;
      ExprPtr empty = Make(ExprKind::kList);
      empty->name = "tuple";
      return empty;
    }
    auto first = ParseExpression(true);
    if (!first.ok()) return first;
    if (IsOp(")")) {
      ++pos_;
      return first;
    }
    ExprPtr tuple = Make(ExprKind::kList);
    tuple->name = "tuple";
    tuple->args.push_back(std::move(*first));
    if (absl::Status s = Expect(","); !s.ok()) return s;
    if (absl::Status s = ParseList(")", &tuple->args); !s.ok()) return s;
    return tuple;
  }

  // Comma-separated expressions up to `close` (consumed); a trailing comma is allowed.
  absl::Status ParseList(absl::string_view close, std::vector<ExprPtr>* out) {
    while (!IsOp(close)) {
      auto e = ParseExpression(true);
      if (!e.ok()) return e.status();
      out->push_back(std::move(*e));
      if (!IsOp(",")) break;
      ++pos_;
    }
    return Expect(close);
  }

  absl::StatusOr<ExprPtr> ParseDict() {
    ++pos_;
    ExprPtr e = Make(ExprKind::kDict);
    while (!IsOp("}")) {
      auto k = ParseExpression(true);
      if (!k.ok()) return k;
      if (absl::Status s = Expect(":"); !s.ok()) return s;
      auto v = ParseExpression(true);
      if (!v.ok()) return v;
      e->args.push_back(std::move(*k));
      e->args.push_back(std::move(*v));
      if (!IsOp(",")) break;
      ++pos_;
    }
    if (absl::Status s = Expect("}"); !s.ok()) return s;
    return e;
  }

  absl::StatusOr<ExprPtr> ParsePostfix(ExprPtr node) {
    while (true) {
      if (IsOp(".")) {
        ++pos_;
        ExprPtr a = Make(ExprKind::kAttr);
        if (Peek().type == TokenType::kInt) {
          a->kind = ExprKind::kItem;
          a->args.push_back(std::move(node));
          ExprPtr idx = Make(ExprKind::kLiteral);
          idx->value = Value::Int(Next().int_value);
          a->args.push_back(std::move(idx));
        } else {
          auto n = ExpectName();
          if (!n.ok()) return n.status();
          a->name = *n;
          a->args.push_back(std::move(node));
        }
        node = std::move(a);
      } else if (IsOp("[")) {
        ++pos_;
        auto s = ParseSubscript(std::move(node));
        if (!s.ok()) return s;
        node = std::move(*s);
      } else if (IsOp("(")) {
        auto c = ParseCall(std::move(node), ExprKind::kCall);
        if (!c.ok()) return c;
        node = std::move(*c);
      } else {
        return node;
      }
    }
  }

  absl::StatusOr<ExprPtr> ParseSubscript(ExprPtr node) {
    std::vector<ExprPtr> parts(1);
    int colons = 0;
    while (!IsOp("]")) {
      if (IsOp(":")) {
        if (++colons > 2) return Error("too many ':' in slice");
        parts.emplace_back();
        ++pos_;
        continue;
      }
      if (parts.back() != nullptr) return Error("expected ']'");
      auto e = ParseExpression(true);
      if (!e.ok()) return e;
      parts.back() = std::move(*e);
    }
    ++pos_;
    ExprPtr out = Make(colons == 0 ? ExprKind::kItem : ExprKind::kSlice);
    out->args.push_back(std::move(node));
    if (colons == 0 && parts[0] == nullptr) return Error("empty subscript");
    parts.resize(colons == 0 ? 1 : 3);
    for (auto& p : parts) out->args.push_back(std::move(p));
    return out;
  }

  // `(args, name=value...)` after `callee` (args[0] of the result).
  absl::StatusOr<ExprPtr> ParseCall(ExprPtr callee, ExprKind kind, std::string name = "") {
    ExprPtr c = Make(kind);
    c->name = std::move(name);
    c->args.push_back(std::move(callee));
    if (!IsOp("(")) return c;
    ++pos_;
    while (!IsOp(")")) {
      if (Peek().type == TokenType::kName && IsOp("=", 1)) {
        std::string key = Next().text;
        ++pos_;
        auto v = ParseExpression(true);
        if (!v.ok()) return v;
        c->kwargs.emplace_back(std::move(key), std::move(*v));
      } else {
        if (!c->kwargs.empty()) return Error("positional argument after keyword argument");
        auto v = ParseExpression(true);
        if (!v.ok()) return v;
        c->args.push_back(std::move(*v));
      }
      if (!IsOp(",")) break;
      ++pos_;
    }
    if (absl::Status s = Expect(")"); !s.ok()) return s;
    return c;
  }

  absl::StatusOr<ExprPtr> ParseFilterChain(ExprPtr node) {
    while (true) {
      if (IsOp("|")) {
        ++pos_;
        auto n = ExpectName();
        if (!n.ok()) return n.status();
        if (!IsFilter(*n)) return Error(absl::StrCat("no filter named '", *n, "'"));
        auto f = ParseCall(std::move(node), ExprKind::kFilter, *n);
        if (!f.ok()) return f;
        node = std::move(*f);
      } else if (IsName("is")) {
        ++pos_;
        bool negated = false;
        if (IsName("not")) {
          negated = true;
          ++pos_;
        }
        auto n = ExpectName();
        if (!n.ok()) return n.status();
        if (!IsTest(*n)) return Error(absl::StrCat("no test named '", *n, "'"));
        ExprPtr t;
        if (IsOp("(")) {
          auto c = ParseCall(std::move(node), ExprKind::kTest, *n);
          if (!c.ok()) return c;
          t = std::move(*c);
        } else {
          t = Make(ExprKind::kTest);
          t->name = *n;
          t->args.push_back(std::move(node));
          const TokenType ty = Peek().type;
          const bool arg_follows =
              (ty == TokenType::kName || ty == TokenType::kString || ty == TokenType::kInt ||
               ty == TokenType::kFloat || IsOp("[") || IsOp("{")) &&
              !IsName("else") && !IsName("or") && !IsName("and") && !IsName("if") &&
              !IsName("not") && !IsName("in") && !IsName("is");
          if (arg_follows) {
            auto a = ParsePrimary();
            if (!a.ok()) return a;
            auto p = ParsePostfix(std::move(*a));
            if (!p.ok()) return p;
            t->args.push_back(std::move(*p));
          }
        }
        t->negated = negated;
        node = std::move(t);
      } else if (IsOp("(")) {
        auto c = ParseCall(std::move(node), ExprKind::kCall);
        if (!c.ok()) return c;
        node = std::move(*c);
      } else {
        return node;
      }
    }
  }

  const std::vector<Token>& t_;
  size_t pos_ = 0;
  int depth_ = 0;
};

}  // namespace

absl::StatusOr<Body> Parse(const std::vector<Token>& tokens) {
  return Parser(tokens).ParseTemplate();
}

}  // namespace hkv::jinja
