#pragma once
// Tokenizer: text <-> token ids. Implementations are immutable after loading, so one instance
// may be shared by every thread.

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "common/ids.h"
#include "tokenizer/utf8.h"

namespace hkv {

// Work counters of one encoding, for tests and benchmarks.
struct EncodeStats {
  int64_t pair_lookups = 0;  // Adjacent symbol pairs looked up in the merge table.
  int64_t merges = 0;        // Pairs merged.
  int64_t checks = 0;        // Calls of EncodeControl::check.
};

// How one encoding may be stopped. `check` is polled on the encoding thread about every 64 KiB
// of text and every 64 Ki merge steps (never for short text); when it returns an error, the
// encoding stops and returns that error (CANCELLED when the client went away,
// DEADLINE_EXCEEDED when its deadline passed).
struct EncodeControl {
  std::function<absl::Status()> check;  // May be empty: never stop.
  EncodeStats* stats = nullptr;         // Optional; counters are added to it.
};

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;

  // Token ids of `text`, with BOS first when `add_bos` and the tokenizer has one. Time is
  // O(n log n) in the length of `text`; the only errors are those of `control.check`.
  virtual absl::StatusOr<std::vector<TokenId>> TryEncode(std::string_view text, bool add_bos,
                                                         const EncodeControl& control) const = 0;
  // TryEncode without a check (it cannot fail).
  std::vector<TokenId> Encode(std::string_view text, bool add_bos) const;
  // Raw bytes of one token (byte-fallback tokens give their byte; special tokens their text).
  // `prev` is the token before it (-1 at the start), for tokenizers that strip a leading space.
  virtual std::string TokenBytes(TokenId prev, TokenId id) const = 0;
  // The bytes of `ids` joined (invalid UTF-8 kept as is; see DecodeText for what clients get).
  virtual std::string Decode(absl::Span<const TokenId> ids) const;

  virtual int32_t vocab_size() const = 0;
  virtual TokenId bos_id() const = 0;                  // -1 if none.
  virtual std::vector<TokenId> eos_ids() const = 0;   // May be empty.
  // The most bytes of text that one token of Encode's output can stand for, so that a text of
  // more than context x this many bytes can never fit a context; 0 when no such bound exists
  // (a vocabulary without a token for every byte drops some bytes instead of encoding them).
  virtual int32_t max_bytes_per_token() const { return 0; }
};

// The text of `ids` as a client sees it: their bytes, repaired into valid UTF-8 (SanitizeUtf8 in
// tokenizer/utf8.h). `prev` is the token before ids[0], -1 if none. Equals the concatenation of
// an IncrementalDecoder's output over the same ids.
std::string DecodeText(const Tokenizer& tokenizer, absl::Span<const TokenId> ids,
                       TokenId prev = -1);

// Streaming detokenizer: feed ids one at a time, get back valid UTF-8 only. An incomplete
// character is held back until later tokens complete it; ill-formed bytes become U+FFFD, and so
// does a character still incomplete at Flush. Not thread-safe; one per request.
class IncrementalDecoder {
 public:
  // `prev` is the token before the first one pushed (the prompt's last), -1 if none.
  explicit IncrementalDecoder(const Tokenizer* tokenizer, TokenId prev = -1)
      : tokenizer_(tokenizer), prev_(prev) {}
  // Appends `id` and returns the text now final (valid UTF-8, possibly empty).
  std::string Push(TokenId id);
  // Ends the stream: returns U+FFFD for a character still incomplete, else "".
  std::string Flush() { return utf8_.Flush(); }

 private:
  const Tokenizer* tokenizer_;
  TokenId prev_;
  Utf8Sanitizer utf8_;
};

}  // namespace hkv
