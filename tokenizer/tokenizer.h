#pragma once
// Tokenizer: text <-> token ids. Implementations are immutable after loading, so one instance
// may be shared by every thread.

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "common/ids.h"

namespace hkv {

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;

  // Token ids of `text`, with BOS first when `add_bos` and the tokenizer has one.
  virtual std::vector<TokenId> Encode(std::string_view text, bool add_bos) const = 0;
  // Raw bytes of one token (byte-fallback tokens give their byte; special tokens their text).
  // `prev` is the token before it (-1 at the start), for tokenizers that strip a leading space.
  virtual std::string TokenBytes(TokenId prev, TokenId id) const = 0;
  // The text of `ids` (the bytes of each token joined; invalid UTF-8 kept as is).
  virtual std::string Decode(absl::Span<const TokenId> ids) const;

  virtual int32_t vocab_size() const = 0;
  virtual TokenId bos_id() const = 0;                  // -1 if none.
  virtual std::vector<TokenId> eos_ids() const = 0;   // May be empty.
};

// Streaming-safe detokenizer: feed ids one at a time, get back only complete UTF-8 text, never
// half a character. Not thread-safe; one per request.
class IncrementalDecoder {
 public:
  // `prev` is the token before the first one pushed (the prompt's last), -1 if none.
  explicit IncrementalDecoder(const Tokenizer* tokenizer, TokenId prev = -1)
      : tokenizer_(tokenizer), prev_(prev) {}
  // Appends `id` and returns the newly completed text (possibly empty).
  std::string Push(TokenId id);
  // Returns whatever bytes are still held back (at the end of the stream).
  std::string Flush();

 private:
  const Tokenizer* tokenizer_;
  TokenId prev_;
  std::string pending_;
};

// Length of the longest prefix of `bytes` that ends on a UTF-8 character boundary (an
// incomplete trailing sequence is excluded; invalid bytes count as complete).
size_t CompleteUtf8Prefix(std::string_view bytes);

}  // namespace hkv
