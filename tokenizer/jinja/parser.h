#pragma once
// Jinja parser: tokens to the syntax tree of ast.h, with Jinja's operator precedence (lowest
// first): `x if c else y`, or, and, not, comparisons and `in`, + -, ~, * / // %, **, unary - +,
// then postfix `.attr` `[i]` `[a:b:c]` `(args)` `| filter` `is test`.
//
// Tags: if/elif/else, for (tuple targets, `if` filter, else), set (name, ns.attr, a block),
// macro, break/continue (transformers loads Jinja's loopcontrols), generation (transformers'
// assistant-mask tag, rendered as is). Other tags are INVALID_ARGUMENT naming the tag.
// Thread-safe: pure function.

#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "tokenizer/jinja/ast.h"
#include "tokenizer/jinja/lexer.h"

namespace hkv::jinja {

// Parses a whole template. INVALID_ARGUMENT with the line for a syntax error, an unclosed
// block, or nesting deeper than kMaxParseDepth.
absl::StatusOr<Body> Parse(const std::vector<Token>& tokens);

inline constexpr int kMaxParseDepth = 200;

}  // namespace hkv::jinja
