#include "tokenizer/jinja/template.h"

#include "tokenizer/jinja/lexer.h"
#include "tokenizer/jinja/parser.h"
#include "tokenizer/jinja/renderer.h"

namespace hkv::jinja {

absl::StatusOr<Template> Template::Parse(absl::string_view source) {
  auto tokens = Lex(source);
  if (!tokens.ok()) return tokens.status();
  auto body = jinja::Parse(*tokens);
  if (!body.ok()) return body.status();
  return Template(std::make_shared<const Body>(std::move(*body)));
}

absl::StatusOr<std::string> Template::Render(const ValueDict& variables,
                                             const RenderLimits& limits) const {
  Renderer r(variables, limits);
  return r.Render(*body_);
}

}  // namespace hkv::jinja
