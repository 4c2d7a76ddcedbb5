#pragma once
// OpenAiReply: the HTTP reply of one completions or chat request, made from its engine requests'
// RequestStreams (one per prompt, each of n samples: choice prompt_index * n + sample, as OpenAI
// numbers them) as they produce output: server-sent event chunks while they
// run when the client asked to stream, else one response object once all have finished. A
// request that fails before any output (even a streamed one: its head waits for the first
// event) is answered with its error's HTTP status; one that fails later ends its event stream
// with an error event. Abandon() (the client left)
// cancels every choice still running, so its blocks are freed within an engine step.
//
// Threading: built on a handler thread, then used by the StreamingHttpServer thread alone.

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "server/auth/tenant_limiter.h"
#include "server/engine.h"
#include "server/openai_render.h"
#include "server/request_log.h"
#include "server/request_stream.h"
#include "server/streaming_http_server.h"
#include "tokenizer/tokenizer.h"

namespace hkv {

class OpenAiReply : public HttpReplySource {
 public:
  // REQUIRES: `streams` is not empty; `engine` outlives this object. `tokenizer` (may be null:
  // tokens are then rendered as "token_id:N") spells the tokens of logprobs.
  OpenAiReply(Engine* engine, OpenAiReplyInfo info, bool stream, bool include_usage,
              std::vector<std::shared_ptr<RequestStream>> streams,
              std::shared_ptr<const Tokenizer> tokenizer = nullptr);
  // Logs the request's line when the reply ends (finished, failed or abandoned).
  ~OpenAiReply() override;

  // Sends `headers` (X-Request-Id) with the response, holds `tenant_slot` (the caller's place
  // under --max-requests-per-key) until the reply ends, and completes `log` (which has the ids)
  // with the choices' usage for LogFinishedRequest then; `start` is when the request arrived.
  void Attach(HttpHeaders headers, FinishedRequest log, absl::Time start,
              std::optional<TenantLimiter::Slot> tenant_slot);

  void Poll(HttpReplyWriter* writer) override;
  void Abandon() override;

 private:
  struct Choice {
    int stream = 0;    // Index into streams_; the sample is the choice's index % n_.
    std::string text;  // Non-streamed replies only.
    std::vector<OpenAiLogprob> logprobs;  // Non-streamed replies only.
    TokenId prev = -1;        // The last token so far (the prompt's at first), for TokenBytes.
    int64_t text_offset = 0;  // Bytes of token strings so far (completions' text_offset).
    FinishReason finish = FinishReason::kNone;
    StreamUsage usage;
    bool done = false;
  };
  // Moves the chunks waiting in stream `s` into its choices (`events` when streaming).
  void Drain(int s, std::string* events);
  // The logprobs of `chunk`'s tokens, advancing `c`'s prev and text_offset.
  std::vector<OpenAiLogprob> ChunkLogprobs(const StreamChunk& chunk, Choice& c) const;
  std::string TokenBytes(TokenId prev, TokenId id) const;
  // Whether every sample of stream `s` has ended.
  bool StreamDone(int s) const;
  // Writes the stream's head (and a chat's role deltas) unless written.
  void StartStream(HttpReplyWriter* writer);
  void CancelRunning();
  void Fail(HttpReplyWriter* writer);
  void Complete(HttpReplyWriter* writer);
  void Log();

  Engine* const engine_;
  const std::shared_ptr<const Tokenizer> tokenizer_;
  const OpenAiReplyInfo info_;
  const bool stream_;
  const bool include_usage_;
  std::vector<std::shared_ptr<RequestStream>> streams_;
  int n_ = 1;                    // Samples per stream (every stream has the same).
  std::vector<Choice> choices_;  // streams_.size() * n_.
  bool started_ = false;
  bool ended_ = false;   // A whole response or the stream's end was written.
  absl::Status error_;   // The first choice's failure.
  HttpHeaders headers_;  // Sent with the response's head.
  std::optional<FinishedRequest> log_;
  absl::Time start_;
  std::optional<TenantLimiter::Slot> tenant_slot_;
};

}  // namespace hkv
