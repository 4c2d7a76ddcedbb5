#pragma once
// RequestStream: the output channel of one request, from the engine (writer: its StreamPusher's
// thread) to the gRPC handler or CLI (reader). Thread-safe: one writer, one reader. A reader that
// cannot block in Next (the HTTP API's poll loop) sets a notify function instead and reads with a
// zero timeout when it is called.

#include <cstdint>
#include <deque>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/batch.h"
#include "common/finish_reason.h"
#include "common/ids.h"

namespace hkv {

struct StreamUsage {
  int32_t prompt_tokens = 0;
  int32_t generated_tokens = 0;
  int64_t kv_tokens_kept = 0;
  int64_t kv_tokens_full = 0;
  int64_t kv_bytes_kept = 0;
  int64_t kv_bytes_full = 0;
  double queue_time_ms = 0;
  double time_to_first_token_ms = 0;
  int32_t num_preemptions = 0;
  uint64_t seed = 0;  // The sampling seed the request used (drawn by the engine if unseeded).
};

struct StreamChunk {
  std::vector<TokenId> token_ids;
  std::vector<TokenLogprobs> logprobs;  // One per token id when the request asked for them.
  std::string text;
  bool finished = false;
  FinishReason finish = FinishReason::kNone;
  absl::Status status;  // Non-OK only for a request that failed (finish == kError).
  StreamUsage usage;    // Set on the finished chunk.
  // n > 1: the sample (0..n-1) this chunk continues; `finished` ends that sample only, and
  // `last` (set by Push) marks the chunk that ends the stream: every sample finished, or an
  // error that ends the call.
  int32_t index = 0;
  bool last = false;
};

class RequestStream {
 public:
  RequestStream(RequestId id, std::string request_id)
      : id_(id), request_id_(std::move(request_id)) {}

  RequestId id() const { return id_; }
  const std::string& request_id() const { return request_id_; }
  const std::vector<TokenId>& prompt_ids() const { return prompt_ids_; }
  void set_prompt_ids(std::vector<TokenId> ids) { prompt_ids_ = std::move(ids); }
  // The owning tenant ("" without API keys); set before the stream is shared.
  const std::string& tenant() const { return tenant_; }
  void set_tenant(std::string tenant) { tenant_ = std::move(tenant); }
  int32_t num_samples() const { return num_samples_; }
  void set_num_samples(int32_t n) { num_samples_ = n; }  // Before the stream is shared.

  // Writer: queues a chunk. Chunks after the last one (see StreamChunk::last) are dropped.
  void Push(StreamChunk chunk);
  // Reader: waits up to `timeout` for the next chunk; nullopt on timeout.
  std::optional<StreamChunk> Next(absl::Duration timeout);
  bool finished() const;
  // Reader: calls `notify` after every Push from now on, on the writer's thread and under this
  // stream's lock (so it must be quick and must not call back into the stream), and once at
  // once if chunks are already waiting. Replaces any earlier one.
  void SetNotify(std::function<void()> notify);

 private:
  const RequestId id_;
  const std::string request_id_;
  std::vector<TokenId> prompt_ids_;  // Set before the stream is shared.
  std::string tenant_;               // Set before the stream is shared.
  int32_t num_samples_ = 1;          // Set before the stream is shared.
  mutable absl::Mutex mu_;
  std::deque<StreamChunk> chunks_ ABSL_GUARDED_BY(mu_);
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
  std::function<void()> notify_ ABSL_GUARDED_BY(mu_);
  int32_t samples_finished_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace hkv
