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

size_t CompleteUtf8Prefix(std::string_view bytes) {
  // Walk back over at most 3 continuation bytes to the last lead byte; keep it only if its
  // sequence is complete.
  const size_t n = bytes.size();
  size_t i = n;
  int continuation = 0;
  while (i > 0 && continuation < 4) {
    const unsigned char c = static_cast<unsigned char>(bytes[i - 1]);
    if ((c & 0xC0) != 0x80) break;
    --i;
    ++continuation;
  }
  if (i == 0) return continuation == 0 ? 0 : n;  // Only continuation bytes: invalid, emit.
  const unsigned char lead = static_cast<unsigned char>(bytes[i - 1]);
  int need = 0;
  if (lead < 0x80) return n;
  if ((lead & 0xE0) == 0xC0) need = 1;
  else if ((lead & 0xF0) == 0xE0) need = 2;
  else if ((lead & 0xF8) == 0xF0) need = 3;
  else return n;  // Invalid lead byte: nothing to wait for.
  return continuation >= need ? n : i - 1;
}

std::string IncrementalDecoder::Push(TokenId id) {
  pending_ += tokenizer_->TokenBytes(prev_, id);
  prev_ = id;
  const size_t complete = CompleteUtf8Prefix(pending_);
  std::string out = pending_.substr(0, complete);
  pending_.erase(0, complete);
  return out;
}

std::string IncrementalDecoder::Flush() {
  std::string out;
  out.swap(pending_);
  return out;
}

}  // namespace hkv
