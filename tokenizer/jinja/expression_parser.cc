// Parser's expression productions (recursive_parser.h), lowest precedence first, then
// primaries and their postfix `.attr` `[i]` `[a:b:c]` `(args)` `| filter` `is test`.
#include <initializer_list>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "tokenizer/jinja/builtins.h"
#include "tokenizer/jinja/recursive_parser.h"

namespace hkv::jinja {

absl::StatusOr<ExprPtr> Parser::ParseExpression(bool with_condexpr) {
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

absl::StatusOr<ExprPtr> Parser::BinaryChain(Level next,
                                            std::initializer_list<absl::string_view> ops,
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

absl::StatusOr<ExprPtr> Parser::ParseOr() {
  return BinaryChain(&Parser::ParseAnd, {"or"}, ExprKind::kOr, true);
}

absl::StatusOr<ExprPtr> Parser::ParseAnd() {
  return BinaryChain(&Parser::ParseNot, {"and"}, ExprKind::kAnd, true);
}

absl::StatusOr<ExprPtr> Parser::ParseNot() {
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

absl::StatusOr<ExprPtr> Parser::ParseCompare() {
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

absl::StatusOr<ExprPtr> Parser::ParseMath1() {
  return BinaryChain(&Parser::ParseConcat, {"+", "-"}, ExprKind::kBinary, false);
}

absl::StatusOr<ExprPtr> Parser::ParseConcat() {
  return BinaryChain(&Parser::ParseMath2, {"~"}, ExprKind::kBinary, false);
}

absl::StatusOr<ExprPtr> Parser::ParseMath2() {
  return BinaryChain(&Parser::ParsePow, {"*", "/", "//", "%"}, ExprKind::kBinary, false);
}

absl::StatusOr<ExprPtr> Parser::ParsePow() {
  return BinaryChain(&Parser::ParseUnaryFiltered, {"**"}, ExprKind::kBinary, false);
}

absl::StatusOr<ExprPtr> Parser::ParseUnary(bool with_filter) {
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

absl::StatusOr<ExprPtr> Parser::ParsePrimary() {
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

absl::StatusOr<ExprPtr> Parser::ParseParenthesized() {
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

absl::Status Parser::ParseList(absl::string_view close, std::vector<ExprPtr>* out) {
  while (!IsOp(close)) {
    auto e = ParseExpression(true);
    if (!e.ok()) return e.status();
    out->push_back(std::move(*e));
    if (!IsOp(",")) break;
    ++pos_;
  }
  return Expect(close);
}

absl::StatusOr<ExprPtr> Parser::ParseDict() {
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

absl::StatusOr<ExprPtr> Parser::ParsePostfix(ExprPtr node) {
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

absl::StatusOr<ExprPtr> Parser::ParseSubscript(ExprPtr node) {
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

absl::StatusOr<ExprPtr> Parser::ParseCall(ExprPtr callee, ExprKind kind, std::string name) {
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

absl::StatusOr<ExprPtr> Parser::ParseFilterChain(ExprPtr node) {
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
            !IsName("else") && !IsName("or") && !IsName("and") && !IsName("if") && !IsName("not") &&
            !IsName("in") && !IsName("is");
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
}  // namespace hkv::jinja
