#pragma once
// OpenAiReply: the HTTP reply of one completions or chat request, made from its engine requests'
// RequestStreams (one per choice) as they produce output: server-sent event chunks while they
// run when the client asked to stream, else one response object once all have finished. A
// request that fails before any output (even a streamed one: its head waits for the first
// event) is answered with its error's HTTP status; one that fails later ends its event stream
// with an error event. Abandon() (the client left)
// cancels every choice still running, so its blocks are freed within an engine step.
//
// Threading: built on a handler thread, then used by the StreamingHttpServer thread alone.

#include <memory>
#include <string>
#include <vector>

#include "server/engine.h"
#include "server/openai_render.h"
#include "server/request_stream.h"
#include "server/streaming_http_server.h"

namespace hkv {

class OpenAiReply : public HttpReplySource {
 public:
  // REQUIRES: `streams` is not empty; `engine` outlives this object.
  OpenAiReply(Engine* engine, OpenAiReplyInfo info, bool stream, bool include_usage,
              std::vector<std::shared_ptr<RequestStream>> streams);

  void Poll(HttpReplyWriter* writer) override;
  void Abandon() override;

 private:
  struct Choice {
    std::shared_ptr<RequestStream> stream;
    std::string text;  // Non-streamed replies only.
    FinishReason finish = FinishReason::kNone;
    StreamUsage usage;
    bool done = false;
  };
  // Moves the chunks waiting in choice `index`'s stream into the reply (`events` when
  // streaming).
  void Drain(int index, std::string* events);
  // Writes the stream's head (and a chat's role deltas) unless written.
  void StartStream(HttpReplyWriter* writer);
  void CancelRunning();
  void Fail(HttpReplyWriter* writer);
  void Complete(HttpReplyWriter* writer);

  Engine* const engine_;
  const OpenAiReplyInfo info_;
  const bool stream_;
  const bool include_usage_;
  std::vector<Choice> choices_;
  bool started_ = false;
  absl::Status error_;  // The first choice's failure.
};

}  // namespace hkv
