#include "tokenizer/llama2c_tokenizer.h"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <optional>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "common/mapped_file.h"
#include "common/status_macros.h"
#include "tokenizer/bpe_merge.h"

namespace hkv {
namespace {

constexpr TokenId kBos = 1;
constexpr TokenId kEos = 2;
constexpr TokenId kByteOffset = 3;  // <0x00> is token 3.

class Llama2cTokenizer : public Tokenizer {
 public:
  Llama2cTokenizer(std::vector<std::string> pieces, std::vector<float> scores)
      : pieces_(std::move(pieces)), scores_(std::move(scores)) {
    for (size_t i = 0; i < pieces_.size(); ++i) {
      ids_.emplace(pieces_[i], static_cast<TokenId>(i));
      max_piece_bytes_ = std::max(max_piece_bytes_, static_cast<int32_t>(pieces_[i].size()));
    }
  }

  absl::StatusOr<std::vector<TokenId>> TryEncode(std::string_view text, bool add_bos,
                                                 const EncodeControl& control) const override {
    std::vector<TokenId> out;
    if (add_bos) out.push_back(kBos);
    if (text.empty()) return out;
    EncodeChecker checker(control);
    std::vector<BpeSymbol> symbols;
    HKV_RETURN_IF_ERROR(Characters(text, &checker, &symbols));
    // Merge the best-scoring adjacent pair (the leftmost of equal scores) until none merges.
    std::string key;
    auto pair = [&](const BpeSymbol& left, const BpeSymbol& right) {
      return Merged(left, right, &key);
    };
    HKV_RETURN_IF_ERROR(MergeBpe(pair, &checker, &symbols));
    for (const BpeSymbol& s : symbols) out.push_back(s.id);
    return out;
  }

  std::string TokenBytes(TokenId prev, TokenId id) const override {
    // BOS/EOS are control tokens: they have no text.
    if (id < 0 || id >= static_cast<TokenId>(pieces_.size()) || id == kBos || id == kEos) {
      return "";
    }
    std::string_view piece = pieces_[id];
    if (prev == kBos && !piece.empty() && piece[0] == ' ') piece.remove_prefix(1);
    // Byte-fallback pieces "<0xXX>".
    if (piece.size() == 6 && piece.substr(0, 3) == "<0x" && piece[5] == '>') {
      unsigned int byte = 0;
      if (std::sscanf(std::string(piece).c_str(), "<0x%02X>", &byte) == 1) {
        return std::string(1, static_cast<char>(byte));
      }
    }
    return std::string(piece);
  }

  int32_t vocab_size() const override { return static_cast<int32_t>(pieces_.size()); }
  TokenId bos_id() const override { return kBos; }
  std::vector<TokenId> eos_ids() const override { return {kEos}; }
  // Every byte becomes a token (its byte-fallback one at worst), and a token stands for at most
  // its piece's bytes (the dummy-prefix space is not from the text).
  int32_t max_bytes_per_token() const override { return max_piece_bytes_; }

 private:
  // A byte-fallback id past a tiny vocabulary has no piece; it never merges.
  BpeSymbol Symbol(TokenId id) const {
    return {id < vocab_size() ? std::string_view(pieces_[id]) : std::string_view(), id};
  }

  // The dummy-prefix space, then one token per UTF-8 character, bytes as fallback.
  absl::Status Characters(std::string_view text, EncodeChecker* checker,
                          std::vector<BpeSymbol>* symbols) const {
    symbols->reserve(text.size() + 1);
    if (auto it = ids_.find(" "); it != ids_.end()) symbols->push_back(Symbol(it->second));
    for (size_t i = 0; i < text.size();) {
      size_t len = 1;
      const unsigned char lead = static_cast<unsigned char>(text[i]);
      if ((lead & 0xE0) == 0xC0) {
        len = 2;
      } else if ((lead & 0xF0) == 0xE0) {
        len = 3;
      } else if ((lead & 0xF8) == 0xF0) {
        len = 4;
      }
      len = std::min(len, text.size() - i);
      for (size_t j = 1; j < len; ++j) {
        if ((static_cast<unsigned char>(text[i + j]) & 0xC0) != 0x80) {
          len = j;
          break;
        }
      }
      auto it = ids_.find(Key(text.substr(i, len)));
      if (it != ids_.end()) {
        symbols->push_back(Symbol(it->second));
      } else {
        for (size_t j = 0; j < len; ++j) {
          symbols->push_back(Symbol(static_cast<unsigned char>(text[i + j]) + kByteOffset));
        }
      }
      i += len;
      HKV_RETURN_IF_ERROR(checker->Tick(len));
    }
    return absl::OkStatus();
  }

  // The piece that joins `left` and `right`, ranked by its score. `key` is scratch space.
  std::optional<BpePair> Merged(const BpeSymbol& left, const BpeSymbol& right,
                                std::string* key) const {
    if (left.id >= vocab_size() || right.id >= vocab_size()) return std::nullopt;
    key->assign(left.text);
    key->append(right.text);
    auto it = ids_.find(*key);
    // As run.c, a merge scoring -1e10 or less (or NaN) never wins.
    if (it == ids_.end() || !(scores_[it->second] > -1e10f)) return std::nullopt;
    return BpePair{RankOfScore(scores_[it->second]), Symbol(it->second)};
  }

  std::vector<std::string> pieces_;
  std::vector<float> scores_;
  absl::flat_hash_map<std::string, TokenId> ids_;
  int32_t max_piece_bytes_ = 1;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Tokenizer>> LoadLlama2cTokenizer(const std::string& path,
                                                                int32_t vocab_size) {
  HKV_ASSIGN_OR_RETURN(MappedFile file, MappedFile::Open(path));
  auto bad = [&](auto&&... parts) {
    return absl::InvalidArgumentError(absl::StrCat("tokenizer '", path, "': ", parts...));
  };
  if (vocab_size <= 0) return bad("vocab_size must be > 0, got ", vocab_size);
  const uint8_t* p = file.data();
  const uint8_t* end = p + file.size();
  if (file.size() < 4) return bad("too small for a header");
  int32_t max_len;
  std::memcpy(&max_len, p, 4);
  p += 4;
  if (max_len <= 0 || max_len > 4096) return bad("impossible max_token_length ", max_len);
  std::vector<std::string> pieces(vocab_size);
  std::vector<float> scores(vocab_size);
  for (int32_t i = 0; i < vocab_size; ++i) {
    int32_t len;
    if (end - p < 8) return bad("truncated at token ", i, " of ", vocab_size);
    std::memcpy(&scores[i], p, 4);
    std::memcpy(&len, p + 4, 4);
    p += 8;
    if (len < 0 || len > max_len) return bad("token ", i, " has impossible length ", len);
    if (end - p < len) return bad("truncated inside token ", i);
    pieces[i].assign(reinterpret_cast<const char*>(p), len);
    p += len;
  }
  return std::unique_ptr<Tokenizer>(
      std::make_unique<Llama2cTokenizer>(std::move(pieces), std::move(scores)));
}

}  // namespace hkv
