#include "tokenizer/tokenizer.h"

#include "common/logging.h"

namespace hkv {

std::vector<TokenId> Tokenizer::Encode(std::string_view text, bool add_bos) const {
  absl::StatusOr<std::vector<TokenId>> ids = TryEncode(text, add_bos, EncodeControl());
  HKV_CHECK(ids.ok()) << ids.status();  // Without a check, nothing can stop the encoding.
  return *std::move(ids);
}

std::string Tokenizer::Decode(absl::Span<const TokenId> ids) const {
  std::string out;
  TokenId prev = -1;
  for (TokenId id : ids) {
    out += TokenBytes(prev, id);
    prev = id;
  }
  return out;
}

std::string DecodeText(const Tokenizer& tokenizer, absl::Span<const TokenId> ids, TokenId prev) {
  std::string bytes;
  for (TokenId id : ids) {
    bytes += tokenizer.TokenBytes(prev, id);
    prev = id;
  }
  return SanitizeUtf8(bytes);
}

std::string IncrementalDecoder::Push(TokenId id) {
  std::string out = utf8_.Push(tokenizer_->TokenBytes(prev_, id));
  prev_ = id;
  return out;
}

}  // namespace hkv
