#pragma once
// Request: one generation request as the scheduler tracks it. Created by the engine, owned by
// the Scheduler from Add() until it finishes. Not thread-safe; engine thread only.

#include <cstdint>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "common/ids.h"
#include "common/sampling_params.h"
#include "headkv/head_budget_planner.h"

namespace hkv {

enum class RequestStatus { kWaiting, kRunning, kFinished };

enum class FinishReason { kNone, kLength, kStop, kEos, kAborted, kError, kDeadline };

struct Request {
  // Set by the engine before Add().
  RequestId id = 0;
  std::string request_id;  // The client's id.
  std::vector<TokenId> prompt;
  SamplingParams sampling;
  std::vector<TokenId> eos_ids;
  int32_t priority = 0;  // Higher runs first; FIFO within a priority.
  HeadBudgetPlan plan;   // How its prompt's KV is compressed (full: never).
  absl::Time arrival_time = absl::InfinitePast();
  absl::Time deadline = absl::InfiniteFuture();

  // Scheduler state.
  RequestStatus status = RequestStatus::kWaiting;
  std::vector<TokenId> output;
  int32_t num_computed = 0;  // Positions whose K/V is cached (prompt first, then output).
  int64_t order = 0;         // Admission order for FIFO and "newest first" preemption.
  int32_t num_preemptions = 0;
  absl::Time first_scheduled = absl::InfinitePast();
  absl::Time first_token = absl::InfinitePast();

  int32_t num_tokens() const { return static_cast<int32_t>(prompt.size() + output.size()); }
  TokenId token_at(int32_t pos) const {
    return pos < static_cast<int32_t>(prompt.size()) ? prompt[pos] : output[pos - prompt.size()];
  }
  // Whether the prompt's prefill runs compressed (one select step).
  bool compresses() const { return plan.compresses(static_cast<int32_t>(prompt.size())); }
};

// What one step (or an abort) produced for a request.
struct RequestOutput {
  RequestId id = 0;
  std::vector<TokenId> new_tokens;
  bool finished = false;
  FinishReason reason = FinishReason::kNone;
  // Set when finished.
  int64_t kv_tokens_kept = 0;  // Tokens cached over all (layer, KV head) rows.
  int64_t kv_tokens_full = 0;  // What full caches would hold for the same positions.
  absl::Duration queue_time;
  absl::Duration time_to_first_token;
  int32_t num_preemptions = 0;
};

}  // namespace hkv
