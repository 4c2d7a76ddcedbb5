#include "tokenizer/jinja/lexer.h"

#include <cctype>
#include <cerrno>
#include <cstdlib>

#include "absl/strings/str_cat.h"

namespace hkv::jinja {
namespace {

bool IsSpace(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

std::string Normalize(absl::string_view source) {
  std::string out;
  out.reserve(source.size());
  for (size_t i = 0; i < source.size(); ++i) {
    if (source[i] == '\r') {
      out += '\n';
      if (i + 1 < source.size() && source[i + 1] == '\n') ++i;
    } else {
      out += source[i];
    }
  }
  if (!out.empty() && out.back() == '\n') out.pop_back();
  return out;
}

void AppendUtf8(uint32_t cp, std::string* out) {
  if (cp < 0x80) {
    *out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    *out += static_cast<char>(0xC0 | (cp >> 6));
    *out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    *out += static_cast<char>(0xE0 | (cp >> 12));
    *out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    *out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    *out += static_cast<char>(0xF0 | (cp >> 18));
    *out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    *out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    *out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

class Lexer {
 public:
  explicit Lexer(std::string src) : src_(std::move(src)) {}

  absl::StatusOr<std::vector<Token>> Run() {
    bool strip_next = false;  // A -}} / -%} before this text.
    bool trim_newline = false;
    while (pos_ < src_.size()) {
      size_t tag = FindTag(pos_);
      std::string text = src_.substr(pos_, tag - pos_);
      CountLines(pos_, tag);
      bool line_start = pos_ == 0 || src_[pos_ - 1] == '\n';
      if (strip_next) {
        size_t i = 0;
        while (i < text.size() && IsSpace(text[i])) ++i;
        text.erase(0, i);
      } else if (trim_newline && !text.empty() && text[0] == '\n') {
        text.erase(0, 1);
        line_start = true;
      }
      strip_next = trim_newline = false;
      if (tag == src_.size()) {
        Emit(TokenType::kText, std::move(text));
        break;
      }
      const char kind = src_[tag + 1];
      const char mod = tag + 2 < src_.size() ? src_[tag + 2] : '\0';
      if (mod == '-') {
        while (!text.empty() && IsSpace(text.back())) text.pop_back();
      } else if (kind != '{' && mod != '+') {
        StripLineStart(&text, line_start);
      }
      Emit(TokenType::kText, std::move(text));
      pos_ = tag + 2 + (mod == '-' || mod == '+' ? 1 : 0);
      absl::Status s = kind == '#' ? SkipComment(&strip_next, &trim_newline)
                                   : LexTag(kind, &strip_next, &trim_newline);
      if (!s.ok()) return s;
    }
    Emit(TokenType::kEnd, "");
    return std::move(tokens_);
  }

 private:
  size_t FindTag(size_t from) const {
    for (size_t i = from; i + 1 < src_.size(); ++i) {
      if (src_[i] == '{' && (src_[i + 1] == '{' || src_[i + 1] == '%' || src_[i + 1] == '#')) {
        return i;
      }
    }
    return src_.size();
  }

  // lstrip_blocks: drop the spaces and tabs between the line's start and a block tag.
  static void StripLineStart(std::string* text, bool chunk_at_line_start) {
    const size_t nl = text->rfind('\n');
    const size_t from = nl == std::string::npos ? 0 : nl + 1;
    if (nl == std::string::npos && !chunk_at_line_start) return;
    for (size_t i = from; i < text->size(); ++i) {
      if ((*text)[i] != ' ' && (*text)[i] != '\t') return;
    }
    text->resize(from);
  }

  void Emit(TokenType type, std::string text) {
    if (type == TokenType::kText && text.empty()) return;
    Token t;
    t.type = type;
    t.text = std::move(text);
    t.line = line_;
    tokens_.push_back(std::move(t));
  }

  void CountLines(size_t from, size_t to) {
    for (size_t i = from; i < to && i < src_.size(); ++i) line_ += src_[i] == '\n';
  }

  absl::Status Error(absl::string_view what) const {
    return absl::InvalidArgumentError(
        absl::StrCat("template syntax error, line ", line_, ": ", what));
  }

  absl::Status SkipComment(bool* strip_next, bool* trim_newline) {
    const size_t end = src_.find("#}", pos_);
    if (end == std::string::npos) return Error("unclosed comment");
    *strip_next = end > pos_ && src_[end - 1] == '-';
    *trim_newline = !(end > pos_ && src_[end - 1] == '+');
    CountLines(pos_, end);
    pos_ = end + 2;
    return absl::OkStatus();
  }

  absl::Status LexTag(char kind, bool* strip_next, bool* trim_newline) {
    const char close = kind == '{' ? '}' : '%';
    Emit(kind == '{' ? TokenType::kVarBegin : TokenType::kBlockBegin, "");
    int depth = 0;
    while (true) {
      while (pos_ < src_.size() && IsSpace(src_[pos_])) {
        line_ += src_[pos_] == '\n';
        ++pos_;
      }
      if (pos_ >= src_.size()) return Error("unclosed tag");
      if (depth == 0) {
        size_t p = pos_;
        const bool minus = src_[p] == '-' || (kind == '%' && src_[p] == '+');
        if (minus) ++p;
        if (p + 1 < src_.size() && src_[p] == close && src_[p + 1] == '}') {
          *strip_next = minus && src_[pos_] == '-';
          *trim_newline = kind == '%' && !minus;
          pos_ = p + 2;
          Emit(kind == '{' ? TokenType::kVarEnd : TokenType::kBlockEnd, "");
          return absl::OkStatus();
        }
      }
      absl::Status s = LexExprToken(&depth);
      if (!s.ok()) return s;
    }
  }

  absl::Status LexExprToken(int* depth) {
    const char c = src_[pos_];
    if (std::isalpha(static_cast<unsigned char>(c)) || c == '_') {
      size_t e = pos_;
      while (e < src_.size() &&
             (std::isalnum(static_cast<unsigned char>(src_[e])) || src_[e] == '_')) {
        ++e;
      }
      Emit(TokenType::kName, src_.substr(pos_, e - pos_));
      pos_ = e;
      return absl::OkStatus();
    }
    if (std::isdigit(static_cast<unsigned char>(c))) return LexNumber();
    if (c == '\'' || c == '"') return LexString(c);
    static const char* kTwo[] = {"//", "**", "==", "!=", "<=", ">="};
    for (const char* op : kTwo) {
      if (src_.compare(pos_, 2, op) == 0) {
        Emit(TokenType::kOperator, op);
        pos_ += 2;
        return absl::OkStatus();
      }
    }
    if (absl::string_view("+-*/%~<>=.,:|()[]{}").find(c) == absl::string_view::npos) {
      return Error(absl::StrCat("unexpected character '", std::string(1, c), "'"));
    }
    if (c == '(' || c == '[' || c == '{') ++*depth;
    if ((c == ')' || c == ']' || c == '}') && *depth > 0) --*depth;
    Emit(TokenType::kOperator, std::string(1, c));
    ++pos_;
    return absl::OkStatus();
  }

  absl::Status LexNumber() {
    size_t e = pos_;
    bool is_float = false;
    while (e < src_.size() && (std::isdigit(static_cast<unsigned char>(src_[e])) || src_[e] == '_'))
      ++e;
    if (e + 1 < src_.size() && src_[e] == '.' &&
        std::isdigit(static_cast<unsigned char>(src_[e + 1]))) {
      is_float = true;
      ++e;
      while (e < src_.size() && std::isdigit(static_cast<unsigned char>(src_[e]))) ++e;
    }
    if (e < src_.size() && (src_[e] == 'e' || src_[e] == 'E')) {
      size_t x = e + 1;
      if (x < src_.size() && (src_[x] == '+' || src_[x] == '-')) ++x;
      if (x < src_.size() && std::isdigit(static_cast<unsigned char>(src_[x]))) {
        is_float = true;
        e = x;
        while (e < src_.size() && std::isdigit(static_cast<unsigned char>(src_[e]))) ++e;
      }
    }
    std::string digits;
    for (size_t i = pos_; i < e; ++i) {
      if (src_[i] != '_') digits += src_[i];
    }
    Token t;
    t.line = line_;
    t.text = digits;
    errno = 0;
    if (is_float) {
      t.type = TokenType::kFloat;
      t.float_value = std::strtod(digits.c_str(), nullptr);
    } else {
      t.type = TokenType::kInt;
      t.int_value = std::strtoll(digits.c_str(), nullptr, 10);
      if (errno == ERANGE) return Error("integer literal out of range");
    }
    tokens_.push_back(std::move(t));
    pos_ = e;
    return absl::OkStatus();
  }

  absl::Status LexString(char quote) {
    std::string out;
    size_t i = pos_ + 1;
    for (; i < src_.size() && src_[i] != quote; ++i) {
      const char c = src_[i];
      if (c != '\\' || i + 1 >= src_.size()) {
        line_ += c == '\n';
        out += c;
        continue;
      }
      const char n = src_[++i];
      switch (n) {
        case 'n':
          out += '\n';
          break;
        case 't':
          out += '\t';
          break;
        case 'r':
          out += '\r';
          break;
        case 'a':
          out += '\a';
          break;
        case 'b':
          out += '\b';
          break;
        case 'f':
          out += '\f';
          break;
        case 'v':
          out += '\v';
          break;
        case '0':
          out += '\0';
          break;
        case '\\':
        case '\'':
        case '"':
          out += n;
          break;
        case '\n':
          line_++;
          break;
        case 'x':
        case 'u':
        case 'U': {
          const size_t len = n == 'x' ? 2 : n == 'u' ? 4 : 8;
          if (i + len >= src_.size()) return Error("truncated escape in string");
          const std::string hex = src_.substr(i + 1, len);
          char* end = nullptr;
          const unsigned long cp = std::strtoul(hex.c_str(), &end, 16);
          if (end != hex.c_str() + len || cp > 0x10FFFF) return Error("bad escape in string");
          AppendUtf8(static_cast<uint32_t>(cp), &out);
          i += len;
          break;
        }
        default:
          out += '\\';
          out += n;
      }
    }
    if (i >= src_.size()) return Error("unclosed string literal");
    Emit(TokenType::kString, "");
    tokens_.back().text = std::move(out);
    pos_ = i + 1;
    return absl::OkStatus();
  }

  std::string src_;
  size_t pos_ = 0;
  int line_ = 1;
  std::vector<Token> tokens_;
};

}  // namespace

absl::StatusOr<std::vector<Token>> Lex(absl::string_view source) {
  return Lexer(Normalize(source)).Run();
}

}  // namespace hkv::jinja
