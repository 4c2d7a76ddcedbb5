#include "tokenizer/llama2c_tokenizer.h"

#include <cstring>
#include <unordered_map>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/mapped_file.h"
#include "common/status_macros.h"

namespace hkv {
namespace {

constexpr TokenId kBos = 1;
constexpr TokenId kEos = 2;
constexpr TokenId kByteOffset = 3;  // <0x00> is token 3.

class Llama2cTokenizer : public Tokenizer {
 public:
  Llama2cTokenizer(std::vector<std::string> pieces, std::vector<float> scores)
      : pieces_(std::move(pieces)), scores_(std::move(scores)) {
    for (size_t i = 0; i < pieces_.size(); ++i) ids_.emplace(pieces_[i], static_cast<TokenId>(i));
  }

  std::vector<TokenId> Encode(std::string_view text, bool add_bos) const override {
    std::vector<TokenId> out;
    if (add_bos) out.push_back(kBos);
    if (text.empty()) return out;
    std::vector<TokenId> tokens;
    if (auto it = ids_.find(" "); it != ids_.end()) tokens.push_back(it->second);
    // One token per UTF-8 character, bytes as fallback.
    for (size_t i = 0; i < text.size();) {
      size_t len = 1;
      const unsigned char lead = static_cast<unsigned char>(text[i]);
      if ((lead & 0xE0) == 0xC0) len = 2;
      else if ((lead & 0xF0) == 0xE0) len = 3;
      else if ((lead & 0xF8) == 0xF0) len = 4;
      len = std::min(len, text.size() - i);
      for (size_t j = 1; j < len; ++j) {
        if ((static_cast<unsigned char>(text[i + j]) & 0xC0) != 0x80) {
          len = j;
          break;
        }
      }
      auto it = ids_.find(std::string(text.substr(i, len)));
      if (it != ids_.end()) {
        tokens.push_back(it->second);
      } else {
        for (size_t j = 0; j < len; ++j) {
          tokens.push_back(static_cast<unsigned char>(text[i + j]) + kByteOffset);
        }
      }
      i += len;
    }
    // Merge the best-scoring adjacent pair until none merges.
    while (true) {
      float best_score = -1e10f;
      TokenId best_id = -1;
      size_t best_at = 0;
      for (size_t i = 0; i + 1 < tokens.size(); ++i) {
        auto it = ids_.find(pieces_[tokens[i]] + pieces_[tokens[i + 1]]);
        if (it != ids_.end() && scores_[it->second] > best_score) {
          best_score = scores_[it->second];
          best_id = it->second;
          best_at = i;
        }
      }
      if (best_id < 0) break;
      tokens[best_at] = best_id;
      tokens.erase(tokens.begin() + best_at + 1);
    }
    out.insert(out.end(), tokens.begin(), tokens.end());
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

 private:
  std::vector<std::string> pieces_;
  std::vector<float> scores_;
  std::unordered_map<std::string, TokenId> ids_;
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
