#pragma once
// PrefillPacer: keeps long prefills from starving the streams that are decoding.
//
// A prefill chunk deep in a long prompt costs far more than a decode step (its attention reads
// every earlier chunk), so with a fixed token budget a 32k prompt stalls every running stream for
// hundreds of milliseconds per chunk and takes nearly all of the GPU until it is done. While some
// stream is decoding, the pacer bounds both, from the steps' measured times:
//
//   - max_step: a step's predicted time. The chunk of a prompt is cut so that
//       decode_step + a * tokens + b * tokens * (start + tokens / 2) <= max_step
//     (a: per-token cost of the GEMMs, norms and KV writes; b: per query-key pair of causal
//     attention over the chunk and the earlier chunks; decode_step: the recent decode-only step).
//   - max_prefill_share: the share of GPU time spent on prefill work (a step's time beyond the
//     decode-only step), over an exponentially decaying window of `window` seconds. Past the
//     share, steps run decodes only until it falls back below.
//
// a and b are fitted online (two-parameter recursive least squares with forgetting) to each
// prefill step's extra time, so the pacer follows the GPU, the model and the context length. With
// no stream decoding, or with both options 0 (the default), it changes nothing. Every prompt still
// progresses: a chunk is at least `min_chunk` tokens, and the share only delays chunks.
//
// Not thread-safe: owned by the Scheduler, on the engine thread.

#include <cstdint>

#include "absl/time/time.h"

namespace hkv {

struct PrefillPacingOptions {
  absl::Duration max_step = absl::ZeroDuration();  // 0: chunks are not cut by time
  double max_prefill_share = 0.0;                  // in (0, 1); 0: no cap
  absl::Duration window = absl::Seconds(2);        // memory of the share's ledger
  int32_t min_chunk = 64;                          // tokens; a cut chunk is never smaller
};

// What one step ran, as the pacer's cost model sees it.
struct StepWork {
  int32_t decodes = 0;         // one-token sequences
  int64_t prefill_tokens = 0;  // tokens of multi-token sequences
  double pairs = 0.0;          // sum over them of tokens * (start + tokens / 2)
  bool empty() const { return decodes == 0 && prefill_tokens == 0; }
};

class PrefillPacer {
 public:
  explicit PrefillPacer(const PrefillPacingOptions& options);

  // Returns whether the pacer is on (some option set).
  bool enabled() const;
  // Returns whether a step in which streams decode may carry prefill work now (the share).
  bool PrefillAllowed() const;
  // Returns the most tokens of a chunk that starts at position `start` when `planned` work is
  // already in the step, or `max_tokens` when time does not bound it. At least
  // min(min_chunk, max_tokens).
  int32_t ChunkLimit(int64_t start, const StepWork& planned, int32_t max_tokens) const;
  // Records a finished step: what it ran (with decodes > 0 when streams decoded) and how long it
  // took.
  void Observe(const StepWork& work, absl::Duration took);

  // The fitted per-token and per-pair costs in seconds, and the decode-only step time (for logs
  // and tests).
  double per_token_seconds() const;
  double per_pair_seconds() const;
  double decode_step_seconds() const { return decode_step_; }

 private:
  // Predicted extra seconds of prefill work `w` beyond the decode-only step.
  double PrefillSeconds(const StepWork& w) const;
  void Fit(double tokens, double pairs, double seconds);

  const PrefillPacingOptions options_;
  // Recursive least squares state for extra = theta . (tokens, pairs); features are scaled by
  // kTokenScale / kPairScale inside Fit() so that P stays well conditioned.
  double theta_[2] = {0.0, 0.0};
  double p_[2][2] = {{1e4, 0.0}, {0.0, 1e4}};  // a weak prior: the data decide at once
  int64_t fitted_ = 0;
  double decode_step_ = 0.0;  // EWMA of decode-only steps, seconds; 0 until one was seen
  // Decaying ledger of the share: prefill seconds and all seconds of steps with decodes.
  double prefill_seconds_ = 0.0;
  double total_seconds_ = 0.0;
};

}  // namespace hkv
