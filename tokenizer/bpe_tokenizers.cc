#include "tokenizer/bpe_tokenizers.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <climits>
#include <unordered_map>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace hkv {
namespace {

constexpr int32_t kControlType = 3;

// Appends the UTF-8 encoding of `cp`.
void AppendUtf8(uint32_t cp, std::string* out) {
  if (cp < 0x80) {
    out->push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

// Splits UTF-8 text into characters (invalid bytes become one-byte characters).
std::vector<std::string> Utf8Chars(std::string_view s) {
  std::vector<std::string> out;
  for (size_t i = 0; i < s.size();) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    size_t n = c < 0x80 ? 1 : (c & 0xE0) == 0xC0 ? 2 : (c & 0xF0) == 0xE0 ? 3 : (c & 0xF8) == 0xF0 ? 4 : 1;
    if (i + n > s.size()) n = 1;
    for (size_t j = 1; j < n; ++j) {
      if ((static_cast<unsigned char>(s[i + j]) & 0xC0) != 0x80) {
        n = 1;
        break;
      }
    }
    out.emplace_back(s.substr(i, n));
    i += n;
  }
  return out;
}

// Calls encode(segment) for text between added tokens and emits added tokens' ids directly.
template <typename EncodeFn>
void SplitOnAdded(std::string_view text, const std::vector<std::pair<std::string, TokenId>>& added,
                  std::vector<TokenId>* out, EncodeFn encode) {
  size_t start = 0;
  for (size_t i = 0; i < text.size();) {
    const std::pair<std::string, TokenId>* hit = nullptr;
    for (const auto& a : added) {  // Longest first (sorted by the factory).
      if (!a.first.empty() && text.compare(i, a.first.size(), a.first) == 0) {
        hit = &a;
        break;
      }
    }
    if (hit == nullptr) {
      ++i;
      continue;
    }
    if (i > start) encode(text.substr(start, i - start), out);
    out->push_back(hit->second);
    i += hit->first.size();
    start = i;
  }
  if (start < text.size()) encode(text.substr(start), out);
}

std::unordered_map<std::string, TokenId> Index(const std::vector<std::string>& tokens) {
  std::unordered_map<std::string, TokenId> ids;
  ids.reserve(tokens.size() * 2);
  for (size_t i = 0; i < tokens.size(); ++i) ids.emplace(tokens[i], static_cast<TokenId>(i));
  return ids;
}

class ByteLevelBpe : public Tokenizer {
 public:
  ByteLevelBpe(BpeVocab vocab, pcre2_code* regex) : v_(std::move(vocab)), regex_(regex) {
    ids_ = Index(v_.tokens);
    for (size_t i = 0; i < v_.merges.size(); ++i) ranks_.emplace(v_.merges[i], static_cast<int>(i));
    // GPT-2's bytes_to_unicode: printable bytes map to themselves, the rest to 256 + n.
    uint32_t next = 256;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174;
      const uint32_t cp = printable ? b : next++;
      AppendUtf8(cp, &byte_char_[b]);
      char_byte_.emplace(byte_char_[b], static_cast<char>(b));
    }
  }
  ~ByteLevelBpe() override { pcre2_code_free(regex_); }

  std::vector<TokenId> Encode(std::string_view text, bool add_bos) const override {
    std::vector<TokenId> out;
    if (add_bos && v_.bos_id >= 0) out.push_back(v_.bos_id);
    SplitOnAdded(text, v_.added, &out, [this](std::string_view t, std::vector<TokenId>* o) {
      EncodeText(t, o);
    });
    return out;
  }

 private:
  void EncodeText(std::string_view text, std::vector<TokenId>* out_ptr) const {
    std::vector<TokenId>& out = *out_ptr;
    pcre2_match_data* md = pcre2_match_data_create_from_pattern(regex_, nullptr);
    size_t at = 0;
    while (at < text.size()) {
      const int rc = pcre2_match(regex_, reinterpret_cast<PCRE2_SPTR>(text.data()), text.size(),
                                 at, 0, md, nullptr);
      size_t begin = text.size(), end = text.size();
      if (rc > 0) {
        const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
        begin = ov[0];
        end = ov[1];
      }
      if (begin > at) EncodePiece(text.substr(at, begin - at), &out);  // Unmatched gap.
      if (end <= begin) break;
      EncodePiece(text.substr(begin, end - begin), &out);
      at = end;
    }
    pcre2_match_data_free(md);
  }

 public:
  std::string TokenBytes(TokenId prev, TokenId id) const override {
    if (id < 0 || id >= static_cast<TokenId>(v_.tokens.size())) return "";
    if (!v_.token_types.empty() && v_.token_types[id] == kControlType) return "";
    std::string out;
    for (const std::string& ch : Utf8Chars(v_.tokens[id])) {
      auto it = char_byte_.find(ch);
      out += it != char_byte_.end() ? std::string(1, it->second) : ch;
    }
    return out;
  }

  int32_t vocab_size() const override { return static_cast<int32_t>(v_.tokens.size()); }
  TokenId bos_id() const override { return v_.bos_id; }
  std::vector<TokenId> eos_ids() const override { return v_.eos_ids; }

 private:
  void EncodePiece(std::string_view piece, std::vector<TokenId>* out) const {
    std::string mapped;
    for (unsigned char c : piece) mapped += byte_char_[c];
    if (v_.ignore_merges) {
      auto it = ids_.find(mapped);
      if (it != ids_.end()) {
        out->push_back(it->second);
        return;
      }
    }
    std::vector<std::string> sym = Utf8Chars(mapped);
    while (sym.size() > 1) {
      int best = INT_MAX;
      size_t best_at = 0;
      for (size_t i = 0; i + 1 < sym.size(); ++i) {
        auto it = ranks_.find(sym[i] + " " + sym[i + 1]);
        if (it != ranks_.end() && it->second < best) {
          best = it->second;
          best_at = i;
        }
      }
      if (best == INT_MAX) break;
      sym[best_at] += sym[best_at + 1];
      sym.erase(sym.begin() + best_at + 1);
    }
    for (const std::string& s : sym) {
      auto it = ids_.find(s);
      if (it != ids_.end()) {
        out->push_back(it->second);
        continue;
      }
      for (const std::string& ch : Utf8Chars(s)) {  // Not in the vocab: single byte symbols.
        auto c = ids_.find(ch);
        if (c != ids_.end()) out->push_back(c->second);
      }
    }
  }

  BpeVocab v_;
  pcre2_code* regex_;
  std::unordered_map<std::string, TokenId> ids_;
  std::unordered_map<std::string, int> ranks_;
  std::string byte_char_[256];
  std::unordered_map<std::string, char> char_byte_;
};

const char kSpace[] = "\xe2\x96\x81";  // U+2581, SentencePiece's space.

class SentencePieceBpe : public Tokenizer {
 public:
  explicit SentencePieceBpe(BpeVocab vocab) : v_(std::move(vocab)) {
    ids_ = Index(v_.tokens);
    for (size_t i = 0; i < v_.merges.size(); ++i) ranks_.emplace(v_.merges[i], static_cast<int>(i));
    for (int b = 0; b < 256; ++b) {
      char name[8];
      std::snprintf(name, sizeof(name), "<0x%02X>", b);
      auto it = ids_.find(name);
      byte_ids_[b] = it == ids_.end() ? -1 : it->second;
    }
  }

  std::vector<TokenId> Encode(std::string_view text, bool add_bos) const override {
    std::vector<TokenId> out;
    if (add_bos && v_.bos_id >= 0) out.push_back(v_.bos_id);
    bool first = true;
    SplitOnAdded(text, v_.added, &out, [&](std::string_view t, std::vector<TokenId>* o) {
      EncodeText(t, first && out.size() <= (add_bos && v_.bos_id >= 0 ? 1u : 0u), o);
      first = false;
    });
    return out;
  }

 private:
  // `at_start`: the text begins the input, so it gets the dummy space prefix.
  void EncodeText(std::string_view text, bool at_start, std::vector<TokenId>* out_ptr) const {
    std::vector<TokenId>& out = *out_ptr;
    if (text.empty()) return;
    std::string s = v_.add_space_prefix && at_start ? std::string(kSpace) : "";
    for (char c : text) {
      if (c == ' ') s += kSpace;
      else s.push_back(c);
    }
    std::vector<std::string> sym = Utf8Chars(s);
    while (sym.size() > 1) {
      // Hugging Face vocabularies rank merge rules; llama.cpp / SentencePiece ones score pieces.
      float best = -INFINITY;
      size_t best_at = SIZE_MAX;
      for (size_t i = 0; i + 1 < sym.size(); ++i) {
        if (!ranks_.empty()) {
          auto r = ranks_.find(sym[i] + " " + sym[i + 1]);
          if (r != ranks_.end() && -static_cast<float>(r->second) > best) {
            best = -static_cast<float>(r->second);
            best_at = i;
          }
          continue;
        }
        auto it = ids_.find(sym[i] + sym[i + 1]);
        if (it != ids_.end() && v_.scores[it->second] > best) {
          best = v_.scores[it->second];
          best_at = i;
        }
      }
      if (best_at == SIZE_MAX) break;
      sym[best_at] += sym[best_at + 1];
      sym.erase(sym.begin() + best_at + 1);
    }
    for (const std::string& piece : sym) {
      auto it = ids_.find(piece);
      if (it != ids_.end()) {
        out.push_back(it->second);
        continue;
      }
      for (unsigned char b : piece) {  // Byte fallback.
        if (byte_ids_[b] >= 0) out.push_back(byte_ids_[b]);
      }
    }
  }

 public:
  std::string TokenBytes(TokenId prev, TokenId id) const override {
    if (id < 0 || id >= static_cast<TokenId>(v_.tokens.size())) return "";
    if (!v_.token_types.empty() && v_.token_types[id] == kControlType) return "";
    const std::string& piece = v_.tokens[id];
    if (piece.size() == 6 && piece.compare(0, 3, "<0x") == 0 && piece[5] == '>') {
      return std::string(1, static_cast<char>(std::stoi(piece.substr(3, 2), nullptr, 16)));
    }
    std::string out;
    for (size_t i = 0; i < piece.size();) {
      if (piece.compare(i, 3, kSpace) == 0) {
        out.push_back(' ');
        i += 3;
      } else {
        out.push_back(piece[i++]);
      }
    }
    // The first token's space is the dummy prefix the encoder added.
    const bool first = prev < 0 || prev == v_.bos_id;
    if (first && v_.add_space_prefix && !out.empty() && out[0] == ' ') out.erase(0, 1);
    return out;
  }

  int32_t vocab_size() const override { return static_cast<int32_t>(v_.tokens.size()); }
  TokenId bos_id() const override { return v_.bos_id; }
  std::vector<TokenId> eos_ids() const override { return v_.eos_ids; }

 private:
  BpeVocab v_;
  std::unordered_map<std::string, TokenId> ids_;
  std::unordered_map<std::string, int> ranks_;  // "left right" -> rank (Hugging Face merges).
  TokenId byte_ids_[256];
};

}  // namespace

absl::StatusOr<std::string> PreTokenizerPattern(const std::string& name) {
  if (name == "llama-bpe" || name == "llama3") {
    return std::string(
        "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| "
        "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+");
  }
  if (name == "qwen2") {
    return std::string(
        "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|"
        "\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+");
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "pre-tokenizer '", name, "' is not supported (llama-bpe / llama3, qwen2)"));
}

absl::StatusOr<std::unique_ptr<Tokenizer>> MakeByteLevelBpeTokenizer(BpeVocab vocab) {
  int error = 0;
  PCRE2_SIZE offset = 0;
  pcre2_code* re = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(vocab.pattern.c_str()),
                                 PCRE2_ZERO_TERMINATED, PCRE2_UTF | PCRE2_UCP, &error, &offset,
                                 nullptr);
  if (re == nullptr) {
    PCRE2_UCHAR message[256];
    pcre2_get_error_message(error, message, sizeof(message));
    return absl::InvalidArgumentError(absl::StrCat("pre-tokenizer regex at ", offset, ": ",
                                                   reinterpret_cast<char*>(message)));
  }
  return std::unique_ptr<Tokenizer>(std::make_unique<ByteLevelBpe>(std::move(vocab), re));
}

absl::StatusOr<std::unique_ptr<Tokenizer>> MakeSentencePieceBpeTokenizer(BpeVocab vocab) {
  if (vocab.merges.empty() && vocab.scores.size() != vocab.tokens.size()) {
    return absl::InvalidArgumentError(
        "a SentencePiece vocabulary needs merge rules or one score per token");
  }
  return std::unique_ptr<Tokenizer>(std::make_unique<SentencePieceBpe>(std::move(vocab)));
}

absl::StatusOr<std::unique_ptr<Tokenizer>> MakeTokenizerFromGguf(const GgufVocab& g) {
  BpeVocab v;
  v.tokens = g.tokens;
  v.scores = g.scores;
  v.token_types = g.token_types;
  v.merges = g.merges;
  v.bos_id = g.bos_id;
  if (g.eos_id >= 0) v.eos_ids = {g.eos_id};
  v.add_space_prefix = g.add_space_prefix;
  if (g.model == "gpt2") {
    HKV_ASSIGN_OR_RETURN(v.pattern, PreTokenizerPattern(g.pre));
    v.ignore_merges = g.pre == "llama-bpe" || g.pre == "llama3";
    return MakeByteLevelBpeTokenizer(std::move(v));
  }
  if (g.model == "llama") return MakeSentencePieceBpeTokenizer(std::move(v));
  return absl::InvalidArgumentError(
      absl::StrCat("tokenizer model '", g.model, "' is not supported (gpt2, llama)"));
}

}  // namespace hkv
