#pragma once
// A Jinja template as chat templates use it: parsed once (lexer.h, parser.h), rendered many
// times (renderer.h) against a dict of variables, within RenderLimits.
//
// Why in-tree rather than Python's Jinja2 embedded: a render then has bounded time and memory
// (limits.h), needs no interpreter or GIL in the server process, is deterministic, and has no
// sandbox to escape. It covers what real chat templates use (see tokenizer/jinja/README.md).
//
// Immutable once parsed; Render is thread-safe (each call has its own state).

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "tokenizer/jinja/ast.h"
#include "tokenizer/jinja/limits.h"
#include "tokenizer/jinja/value.h"

namespace hkv::jinja {

class Template {
 public:
  // Parses `source`. INVALID_ARGUMENT with the line for a syntax error or an unsupported tag.
  static absl::StatusOr<Template> Parse(absl::string_view source);

  // Renders with `variables` in scope (plus range, namespace, dict, raise_exception and
  // strftime_now). INVALID_ARGUMENT with the template's message for its own errors;
  // RESOURCE_EXHAUSTED past `limits`.
  absl::StatusOr<std::string> Render(const ValueDict& variables,
                                     const RenderLimits& limits = RenderLimits()) const;

 private:
  explicit Template(std::shared_ptr<const Body> body) : body_(std::move(body)) {}
  std::shared_ptr<const Body> body_;
};

}  // namespace hkv::jinja
