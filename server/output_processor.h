#pragma once
// OutputProcessor: one request's generated token ids turned into the text its client is sent.
// Per token: detokenize (Tokenizer::TokenBytes), repair into valid UTF-8 (tokenizer/utf8.h: an
// incomplete character waits for the next token, ill-formed bytes become U+FFFD), then match
// the stop strings on that repaired text (server/stop_strings.h). The engine keeps scheduling,
// metrics and usage; any front end (gRPC, the CLI, an HTTP API) gets the same text.
//
// Stop strings: the earliest match in the text available so far wins; neither it nor anything
// after it is sent. Text that may still become a stop string (the automaton's partial match)
// is held back until it cannot, and sent when the output ends for another reason. Work per
// token is proportional to its bytes (amortized), never to the text generated before it, and
// memory to the longest stop string.
//
// Threading: built on the thread that submits the request, then used by the engine thread
// alone.

#include <cstdint>
#include <string>
#include <vector>

#include "common/ids.h"
#include "server/stop_strings.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/utf8.h"

namespace hkv {

class OutputProcessor {
 public:
  // `tokenizer` may be null (a model without one: no text, so no stop strings either); it must
  // outlive this object. `prev` is the token before the first generated one (the prompt's
  // last), -1 if none.
  OutputProcessor(const Tokenizer* tokenizer, TokenId prev, const std::vector<std::string>& stop);

  struct Delta {
    std::string text;       // Valid UTF-8 to send now (possibly empty).
    bool stop_hit = false;  // A stop string matched: the output ends, `text` stops before it.
  };
  // Adds the next generated token; `last` when the output ends with it (everything held back
  // is sent). REQUIRES: no earlier Push was `last` or returned stop_hit.
  Delta Push(TokenId id, bool last);

  // Returns the bytes held back (an incomplete character, plus a possible stop-string start).
  size_t held() const { return utf8_.held() + held_.size(); }

 private:
  const Tokenizer* tokenizer_;
  TokenId prev_;
  Utf8Sanitizer utf8_;
  StopStrings stops_;
  StopStrings::State state_ = StopStrings::kStart;
  std::string held_;  // Repaired text not sent yet: exactly the partial match, depth(state_).
};

}  // namespace hkv
