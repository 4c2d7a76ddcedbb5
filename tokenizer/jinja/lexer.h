#pragma once
// Jinja lexer: template source to tokens, with whitespace control applied the way transformers
// configures Jinja for chat templates (trim_blocks=True, lstrip_blocks=True,
// keep_trailing_newline=False):
//
//   {{- / {%- / {#-   strip all whitespace before the tag;   -}} / -%} / -#}  all after it
//   {% / {#           lstrip_blocks: spaces and tabs between the line's start and the tag go
//                     (unless {%+)
//   %} / #}           trim_blocks: one newline right after the tag goes (unless +%})
//
// Line endings are normalised to \n and one trailing newline of the source is dropped, as
// Jinja does. Thread-safe: pure function.

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace hkv::jinja {

enum class TokenType {
  kText,        // Literal template text (whitespace control already applied).
  kVarBegin,    // {{
  kVarEnd,      // }}
  kBlockBegin,  // {%
  kBlockEnd,    // %}
  kName,
  kString,  // Escapes already decoded.
  kInt,
  kFloat,
  kOperator,  // + - * / // % ** ~ == != < > <= >= = . , : | ( ) [ ] { }
  kEnd,
};

struct Token {
  TokenType type;
  std::string text;  // Text, name, decoded string or operator.
  int64_t int_value = 0;
  double float_value = 0;
  int line = 1;
};

// Tokenizes `source`. INVALID_ARGUMENT (with the line) for an unclosed tag, comment or string,
// or a character no expression may hold. The last token is kEnd.
absl::StatusOr<std::vector<Token>> Lex(absl::string_view source);

}  // namespace hkv::jinja
