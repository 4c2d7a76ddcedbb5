#pragma once
// Request: one generation request as the scheduler tracks it, and RequestOutput, what a step (or
// an abort) reports for it. The engine fills a Request's input fields and hands it to
// Scheduler::Add(); the Scheduler owns it from then on and alone writes its state fields.
//
// Not thread-safe; engine thread only.
//
// Token positions of a request (n = prompt.size(), k = output.size()):
//
//   [ prompt 0 .. n-1 ][ output 0 .. k-1 ]          num_tokens() = n + k
//   |<-- num_computed_tokens: K/V cached -->|       the rest runs in the next steps
//
// A compressed prompt (plan.compresses(n)) is cached as the plan's kept tokens per (layer, KV
// head), but num_computed_tokens still counts positions: n once its prefill has run.

#include <cstdint>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/time/time.h"
#include "common/batch.h"
#include "common/finish_reason.h"
#include "common/ids.h"
#include "common/sampling_params.h"
#include "headkv/head_budget_planner.h"

namespace hkv {

enum class RequestStatus {
  kWaiting,    // Queued, never run.
  kRunning,    // Holds KV blocks and runs each step it fits the budget.
  kPreempted,  // Its blocks were taken back; waiting to be recomputed.
  kFinished,
};

struct Request {
  // Input, set by the engine before Add().
  RequestId id = 0;        // Engine-wide unique.
  std::string request_id;  // The client's id (for logs).
  std::vector<TokenId> prompt;
  SamplingParams sampling;
  std::vector<TokenId> eos_ids;  // End-of-sequence tokens (ignored with sampling.ignore_eos).
  int32_t priority = 0;          // Higher runs first; FIFO within a priority.
  HeadBudgetPlan plan;           // How its prompt's KV is compressed (full policy: never).
  absl::Time arrival_time = absl::InfinitePast();
  absl::Time deadline = absl::InfiniteFuture();

  // n > 1 (sampling.n): the request is sample 0 and its samples 1..n-1 become requests of their
  // own, ids id + 1 .. id + n - 1 (the engine keeps those ids free), once its prefill has sampled
  // all n tokens from the same logits; they share its prompt's KV blocks (copy-on-write).
  // Sample i has sample_index i and seed SampleSeed(seed, i); after the fork every sample runs,
  // is preempted and finishes on its own.
  int32_t sample_index = 0;

  // State, written by the Scheduler only.
  // Set by Add(): what each stop token ends the request with (sampling.stop_token_ids: kStop;
  // eos_ids unless ignore_eos: kEos).
  absl::flat_hash_map<TokenId, FinishReason> stop_tokens;
  RequestStatus status = RequestStatus::kWaiting;
  std::vector<TokenId> output;      // Generated tokens.
  int32_t num_computed_tokens = 0;  // Positions whose K/V is cached (prompt, then output).
  int64_t arrival_order = 0;        // Order of Add(): FIFO, and "newest first" preemption.
  int32_t num_preemptions = 0;
  bool forked = false;  // Sample 0 of n > 1: its samples exist (children have it set too).
  FinishReason finish_reason = FinishReason::kNone;
  absl::Time first_scheduled_time = absl::InfinitePast();
  absl::Time first_token_time = absl::InfinitePast();
  // Async scheduling (Scheduler::ScheduleAhead): tokens run by launched steps whose Update() has
  // not come, whether the latest of those steps samples (its token is pending until then), and
  // whether that step leaves something a next step needs (kept counts, forked samples, a token
  // the worker's penalty history must see), so the request sits out the step planned ahead.
  int32_t in_flight_tokens = 0;
  bool in_flight_sample = false;
  bool in_flight_blocks_ahead = false;
  // Whether the steps in flight append to every row (all but a one-step compressed prefill).
  bool in_flight_rows_plain = true;

  int32_t num_prompt_tokens() const { return static_cast<int32_t>(prompt.size()); }
  int32_t num_tokens() const { return static_cast<int32_t>(prompt.size() + output.size()); }
  // Returns the token at position `pos`. REQUIRES: 0 <= pos < num_tokens().
  TokenId token_at(int32_t pos) const {
    return pos < num_prompt_tokens() ? prompt[pos] : output[pos - prompt.size()];
  }
  // Positions run by steps planned so far: computed, plus those of launched steps (equal to
  // num_computed_tokens whenever no step is in flight).
  int32_t num_scheduled_tokens() const { return num_computed_tokens + in_flight_tokens; }
  // Tokens known or pending: num_tokens(), plus the one a launched step samples.
  int32_t num_tokens_ahead() const { return num_tokens() + (in_flight_sample ? 1 : 0); }
  // Returns the samples this request's next sampling step draws (n before the fork, else 1).
  // A step drawing n blocks the step planned ahead (in_flight_blocks_ahead): no pending token
  // of an unforked request is ever planned, so output.size() decides.
  int32_t samples_to_draw() const { return forked || output.size() > 0 ? 1 : sampling.n; }
  // Returns whether the prompt's prefill runs compressed (its last step selects).
  bool compresses() const { return plan.compresses(num_prompt_tokens()); }
};

// What one step (or an abort or deadline) produced for a request.
struct RequestOutput {
  RequestId id = 0;
  int32_t sample_index = 0;  // n > 1: which sample `id` is (its parent is id - sample_index).
  // Set when sample 0 of n > 1 ends before its samples were forked (so they never will be):
  // samples 1..n-1 end with it, with no tokens.
  int32_t unforked_samples = 0;
  std::vector<TokenId> new_tokens;  // Tokens sampled this step (at most one).
  // When sampling.logprobs >= 0: one per new token.
  std::vector<TokenLogprobs> logprobs;
  bool finished = false;
  FinishReason reason = FinishReason::kNone;
  std::string error;  // kError only: what went wrong.
  // Usage, set when finished. KV is counted in tokens over all (layer, KV head) rows; the
  // engine knows the bytes per token.
  int32_t prompt_tokens = 0;
  int32_t generated_tokens = 0;
  int64_t kv_tokens_kept = 0;  // Tokens cached when it finished (before freeing).
  int64_t kv_tokens_full = 0;  // What uncompressed caches would hold for the same positions.
  absl::Duration queue_time;   // Arrival to first scheduled (to now if never).
  absl::Duration time_to_first_token;  // Arrival to first token (zero if none).
  int32_t num_preemptions = 0;
};

}  // namespace hkv
