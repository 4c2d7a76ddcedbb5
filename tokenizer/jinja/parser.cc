#include "tokenizer/jinja/parser.h"

#include <initializer_list>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "tokenizer/jinja/recursive_parser.h"

namespace hkv::jinja {

absl::Status Parser::ParseBody(std::initializer_list<absl::string_view> ends, Body* body,
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

absl::StatusOr<std::unique_ptr<Stmt>> Parser::ParseTag(const std::string& name, int line) {
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

absl::StatusOr<std::unique_ptr<Stmt>> Parser::ParseIf(int line) {
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
    if (absl::Status st = ParseBody({"elif", "else", "endif"}, &s->bodies.back(), &end); !st.ok()) {
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

absl::StatusOr<std::unique_ptr<Stmt>> Parser::ParseFor(int line) {
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

absl::StatusOr<std::unique_ptr<Stmt>> Parser::ParseSet(int line) {
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

absl::StatusOr<std::unique_ptr<Stmt>> Parser::ParseMacro(int line) {
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
absl::StatusOr<Body> Parse(const std::vector<Token>& tokens) {
  return Parser(tokens).ParseTemplate();
}

}  // namespace hkv::jinja
