#include "tokenizer/bpe_tokenizers.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <memory>
#include <optional>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "tokenizer/added_tokens.h"
#include "tokenizer/bpe_merge.h"

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

// The length of the UTF-8 character at s[i] (an invalid or truncated sequence is one byte).
size_t Utf8CharLen(std::string_view s, size_t i) {
  const unsigned char c = static_cast<unsigned char>(s[i]);
  size_t n = c < 0x80             ? 1
             : (c & 0xE0) == 0xC0 ? 2
             : (c & 0xF0) == 0xE0 ? 3
             : (c & 0xF8) == 0xF0 ? 4
                                  : 1;
  if (i + n > s.size()) return 1;
  for (size_t j = 1; j < n; ++j) {
    if ((static_cast<unsigned char>(s[i + j]) & 0xC0) != 0x80) return 1;
  }
  return n;
}

// Splits UTF-8 text into one symbol per character (spans of `s`).
std::vector<BpeSymbol> Utf8Symbols(std::string_view s) {
  std::vector<BpeSymbol> out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size();) {
    const size_t n = Utf8CharLen(s, i);
    out.push_back({s.substr(i, n), -1});
    i += n;
  }
  return out;
}

// The merged symbol of two adjacent spans of one string.
BpeSymbol Joined(const BpeSymbol& left, const BpeSymbol& right) {
  return {std::string_view(left.text.data(), left.text.size() + right.text.size()), -1};
}

using TokenIndex = absl::flat_hash_map<std::string, TokenId>;

TokenIndex Index(const std::vector<std::string>& tokens) {
  TokenIndex ids;
  ids.reserve(tokens.size());
  for (size_t i = 0; i < tokens.size(); ++i) ids.emplace(tokens[i], static_cast<TokenId>(i));
  return ids;
}

using RankIndex = absl::flat_hash_map<std::string, int>;

RankIndex Ranks(const std::vector<std::string>& merges) {
  RankIndex ranks;
  ranks.reserve(merges.size());
  for (size_t i = 0; i < merges.size(); ++i) ranks.emplace(merges[i], static_cast<int>(i));
  return ranks;
}

// The rank of the merge rule "left right", if there is one. `key` is scratch space.
const int* FindRank(const RankIndex& ranks, const BpeSymbol& left, const BpeSymbol& right,
                    std::string* key) {
  key->assign(left.text);
  key->push_back(' ');
  key->append(right.text);
  auto it = ranks.find(*key);
  return it == ranks.end() ? nullptr : &it->second;
}

struct PcreMatchDataFree {
  void operator()(pcre2_match_data* md) const { pcre2_match_data_free(md); }
};

class ByteLevelBpe : public Tokenizer {
 public:
  ByteLevelBpe(BpeVocab vocab, pcre2_code* regex)
      : v_(std::move(vocab)), regex_(regex), added_(v_.added) {
    ids_ = Index(v_.tokens);
    ranks_ = Ranks(v_.merges);
    // GPT-2's bytes_to_unicode: printable bytes map to themselves, the rest to 256 + n.
    uint32_t next = 256;
    bool every_byte = true;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174;
      const uint32_t cp = printable ? b : next++;
      AppendUtf8(cp, &byte_char_[b]);
      char_byte_.emplace(byte_char_[b], static_cast<char>(b));
      every_byte = every_byte && ids_.contains(byte_char_[b]);
    }
    // A token from BPE stands for one byte per character; an added token for its own text.
    for (const std::string& token : v_.tokens) {
      int32_t chars = 0;
      for (size_t i = 0; i < token.size(); i += Utf8CharLen(token, i)) ++chars;
      max_bytes_per_token_ = std::max(max_bytes_per_token_, chars);
    }
    for (const auto& [text, id] : v_.added) {
      max_bytes_per_token_ = std::max(max_bytes_per_token_, static_cast<int32_t>(text.size()));
    }
    if (!every_byte) max_bytes_per_token_ = 0;  // Bytes without a token are dropped.
  }
  ~ByteLevelBpe() override { pcre2_code_free(regex_); }

  absl::StatusOr<std::vector<TokenId>> TryEncode(std::string_view text, bool add_bos,
                                                 const EncodeControl& control) const override {
    std::vector<TokenId> out;
    if (add_bos && v_.bos_id >= 0) out.push_back(v_.bos_id);
    EncodeChecker checker(control);
    HKV_RETURN_IF_ERROR(added_.Split(
        text, &checker, &out, [&](std::string_view t) { return EncodeText(t, &checker, &out); }));
    return out;
  }

  std::string TokenBytes(TokenId prev, TokenId id) const override {
    if (id < 0 || id >= static_cast<TokenId>(v_.tokens.size())) return "";
    if (!v_.token_types.empty() && v_.token_types[id] == kControlType) return "";
    const std::string& token = v_.tokens[id];
    std::string out;
    for (size_t i = 0; i < token.size();) {
      const std::string_view ch = std::string_view(token).substr(i, Utf8CharLen(token, i));
      auto it = char_byte_.find(Key(ch));
      if (it != char_byte_.end()) {
        out.push_back(it->second);
      } else {
        out.append(ch);
      }
      i += ch.size();
    }
    return out;
  }

  int32_t vocab_size() const override { return static_cast<int32_t>(v_.tokens.size()); }
  TokenId bos_id() const override { return v_.bos_id; }
  std::vector<TokenId> eos_ids() const override { return v_.eos_ids; }
  int32_t max_bytes_per_token() const override { return max_bytes_per_token_; }

 private:
  // Pre-tokenizes with the regex, then runs BPE on each piece.
  absl::Status EncodeText(std::string_view text, EncodeChecker* checker,
                          std::vector<TokenId>* out) const {
    std::unique_ptr<pcre2_match_data, PcreMatchDataFree> md(
        pcre2_match_data_create_from_pattern(regex_, nullptr));
    const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
    uint32_t options = 0;
    size_t at = 0;
    while (at < text.size()) {
      const int rc = pcre2_match(regex_, subject, text.size(), at, options, md.get(), nullptr);
      // PCRE2 checks that the text is valid UTF-8 from the start offset to its end, so checking
      // at every match would make pre-tokenizing quadratic. The first match checked all of it;
      // invalid text fails that one and is encoded below as one piece, as it always was.
      options = PCRE2_NO_UTF_CHECK;
      size_t begin = text.size(), end = text.size();
      if (rc > 0) {
        const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md.get());
        begin = ov[0];
        end = ov[1];
      }
      if (begin > at) HKV_RETURN_IF_ERROR(EncodePiece(text.substr(at, begin - at), checker, out));
      if (end <= begin) break;
      HKV_RETURN_IF_ERROR(EncodePiece(text.substr(begin, end - begin), checker, out));
      HKV_RETURN_IF_ERROR(checker->Tick(end - at));
      at = end;
    }
    return absl::OkStatus();
  }

  absl::Status EncodePiece(std::string_view piece, EncodeChecker* checker,
                           std::vector<TokenId>* out) const {
    std::string mapped;
    mapped.reserve(piece.size() * 2);
    for (unsigned char c : piece) mapped += byte_char_[c];
    if (v_.ignore_merges) {
      auto it = ids_.find(mapped);
      if (it != ids_.end()) {
        out->push_back(it->second);
        return absl::OkStatus();
      }
    }
    std::vector<BpeSymbol> symbols = Utf8Symbols(mapped);
    std::string key;
    auto pair = [&](const BpeSymbol& left, const BpeSymbol& right) -> std::optional<BpePair> {
      const int* rank = FindRank(ranks_, left, right, &key);
      if (rank == nullptr) return std::nullopt;
      return BpePair{static_cast<uint32_t>(*rank), Joined(left, right)};
    };
    HKV_RETURN_IF_ERROR(MergeBpe(pair, checker, &symbols));
    for (const BpeSymbol& s : symbols) {
      auto it = ids_.find(Key(s.text));
      if (it != ids_.end()) {
        out->push_back(it->second);
        continue;
      }
      // Not in the vocab: single byte symbols.
      for (size_t i = 0; i < s.text.size();) {
        const size_t n = Utf8CharLen(s.text, i);
        auto c = ids_.find(Key(s.text.substr(i, n)));
        if (c != ids_.end()) out->push_back(c->second);
        i += n;
      }
    }
    return absl::OkStatus();
  }

  BpeVocab v_;
  pcre2_code* regex_;
  AddedTokens added_;
  TokenIndex ids_;
  RankIndex ranks_;
  std::string byte_char_[256];
  absl::flat_hash_map<std::string, char> char_byte_;
  int32_t max_bytes_per_token_ = 1;
};

const char kSpace[] = "\xe2\x96\x81";  // U+2581, SentencePiece's space.

class SentencePieceBpe : public Tokenizer {
 public:
  explicit SentencePieceBpe(BpeVocab vocab) : v_(std::move(vocab)), added_(v_.added) {
    ids_ = Index(v_.tokens);
    ranks_ = Ranks(v_.merges);
    bool every_byte = true;
    for (int b = 0; b < 256; ++b) {
      char name[8];
      std::snprintf(name, sizeof(name), "<0x%02X>", b);
      auto it = ids_.find(name);
      byte_ids_[b] = it == ids_.end() ? -1 : it->second;
      every_byte = every_byte && byte_ids_[b] >= 0;
    }
    // A token stands for at most its piece's bytes (a text space is one byte, its U+2581 three).
    for (const std::string& token : v_.tokens) {
      max_bytes_per_token_ = std::max(max_bytes_per_token_, static_cast<int32_t>(token.size()));
    }
    if (!every_byte) max_bytes_per_token_ = 0;  // Bytes without a token are dropped.
  }

  absl::StatusOr<std::vector<TokenId>> TryEncode(std::string_view text, bool add_bos,
                                                 const EncodeControl& control) const override {
    std::vector<TokenId> out;
    if (add_bos && v_.bos_id >= 0) out.push_back(v_.bos_id);
    EncodeChecker checker(control);
    bool first = true;
    HKV_RETURN_IF_ERROR(added_.Split(text, &checker, &out, [&](std::string_view t) {
      const bool at_start = first && out.size() <= (add_bos && v_.bos_id >= 0 ? 1u : 0u);
      first = false;
      return EncodeText(t, at_start, &checker, &out);
    }));
    return out;
  }

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
  int32_t max_bytes_per_token() const override { return max_bytes_per_token_; }

 private:
  // `at_start`: the text begins the input, so it gets the dummy space prefix.
  absl::Status EncodeText(std::string_view text, bool at_start, EncodeChecker* checker,
                          std::vector<TokenId>* out) const {
    if (text.empty()) return absl::OkStatus();
    std::string s = v_.add_space_prefix && at_start ? std::string(kSpace) : "";
    s.reserve(s.size() + text.size() * 3);
    for (char c : text) {
      if (c == ' ') {
        s += kSpace;
      } else {
        s.push_back(c);
      }
      HKV_RETURN_IF_ERROR(checker->Tick(1));
    }
    std::vector<BpeSymbol> symbols = Utf8Symbols(s);
    std::string key;
    // Hugging Face vocabularies rank merge rules; llama.cpp / SentencePiece ones score pieces.
    // Ranks go through float as they always did, so that ranks past 2^24 tie the same way.
    auto pair = [&](const BpeSymbol& left, const BpeSymbol& right) -> std::optional<BpePair> {
      if (!ranks_.empty()) {
        const int* rank = FindRank(ranks_, left, right, &key);
        if (rank == nullptr) return std::nullopt;
        return BpePair{RankOfScore(-static_cast<float>(*rank)), Joined(left, right)};
      }
      const BpeSymbol joined = Joined(left, right);
      auto it = ids_.find(Key(joined.text));
      if (it == ids_.end() || !(v_.scores[it->second] > -INFINITY)) return std::nullopt;
      return BpePair{RankOfScore(v_.scores[it->second]), joined};
    };
    HKV_RETURN_IF_ERROR(MergeBpe(pair, checker, &symbols));
    for (const BpeSymbol& piece : symbols) {
      auto it = ids_.find(Key(piece.text));
      if (it != ids_.end()) {
        out->push_back(it->second);
        continue;
      }
      for (unsigned char b : piece.text) {  // Byte fallback.
        if (byte_ids_[b] >= 0) out->push_back(byte_ids_[b]);
      }
    }
    return absl::OkStatus();
  }

  BpeVocab v_;
  AddedTokens added_;
  TokenIndex ids_;
  RankIndex ranks_;  // "left right" -> rank (Hugging Face merges).
  TokenId byte_ids_[256];
  int32_t max_bytes_per_token_ = 1;
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
