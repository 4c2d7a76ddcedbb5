#pragma once
// Per-head importance of one HeadKV scoring probe, accumulated over its greedy decode steps, and
// the table of accepted probes that `hkv headkv-score` writes in the published format that
// head_scores.h reads ({"layer-qhead": [score of each accepted probe, ...]}, layer-major).
//
// R2 (HeadKV's Retrieval-Reasoning heads, FYYFU/HeadKV): at each decode step and for each query
// head, take the top-N attended prompt positions (N = answer span length, ties to the lower
// position) and add the weights of those inside the span, / N.
// R (Wu et al.'s retrieval heads): +1/N when the top-1 position is inside the span and the
// generated token equals the prompt token there.
//
// NOTE: HeadKV's code ranks the whole row (prompt and the tokens generated so far); the issue
// ranks prompt positions only, so rows here cover the prompt and generated tokens never compete.
//
// Thread-compatible: each object has no shared state; use one per probe per thread.

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace hkv {

// The answer's prompt positions [begin, end); its length is N.
struct AnswerSpan {
  int32_t begin = 0;
  int32_t end = 0;
  int32_t size() const { return end - begin; }
};

// Attention rows handed to AddStep, row-major:
//   rows[h * prompt_len + p] = weight of query head h on prompt position p   [num_q_heads,
//   prompt_len]

class R2ProbeScorer {
 public:
  // REQUIRES: num_layers >= 1, num_q_heads >= 1, 0 <= span.begin < span.end.
  R2ProbeScorer(int32_t num_layers, int32_t num_q_heads, AnswerSpan span);

  // Adds one decode step of `layer`. INVALID_ARGUMENT for a bad layer, a non-finite weight, or a
  // row count that is not num_q_heads x prompt_len (>= 1). A span past the prompt keeps N.
  absl::Status AddStep(int32_t layer, absl::Span<const float> rows);

  // Adds one decode step of `layer` from a worker's attention probe (common/batch.h): per query
  // head its k top prompt positions by falling weight and their weights, [num_q_heads, k],
  // k >= 1; the first min(k, N) count (k = min(N, prompt_len) gives AddStep's result).
  // INVALID_ARGUMENT for a bad layer, mismatched or ragged arrays, or a non-finite weight.
  absl::Status AddTopN(int32_t layer, absl::Span<const int32_t> positions,
                       absl::Span<const float> weights);

  // The accumulated scores, [num_layers * num_q_heads] layer-major.
  const std::vector<double>& scores() const { return scores_; }

 private:
  int32_t num_layers_;
  int32_t num_q_heads_;
  AnswerSpan span_;
  std::vector<double> scores_;
  std::vector<int32_t> order_;  // Scratch for the top-N positions of one row.
};

class RProbeScorer {
 public:
  // REQUIRES: as R2ProbeScorer. `prompt_ids` are the prompt's token ids (position p -> id).
  RProbeScorer(int32_t num_layers, int32_t num_q_heads, AnswerSpan span,
               std::vector<int32_t> prompt_ids);

  // Adds one decode step of `layer` that generated `token`. INVALID_ARGUMENT as for R2, and when
  // prompt_len differs from the number of prompt ids.
  absl::Status AddStep(int32_t layer, absl::Span<const float> rows, int32_t token);

  // As AddStep from a worker's probe ([num_q_heads, k] positions by falling weight; the first
  // of each head is its top-1). INVALID_ARGUMENT as R2ProbeScorer::AddTopN, and for a top
  // position outside the prompt ids.
  absl::Status AddTopN(int32_t layer, absl::Span<const int32_t> positions,
                       absl::Span<const float> weights, int32_t token);

  const std::vector<double>& scores() const { return scores_; }

 private:
  int32_t num_layers_;
  int32_t num_q_heads_;
  AnswerSpan span_;
  std::vector<int32_t> prompt_ids_;
  std::vector<double> scores_;
};

// The accepted probes' per-head scores, in acceptance order.
class HeadScoreTable {
 public:
  // REQUIRES: num_layers >= 1, num_heads >= 1.
  HeadScoreTable(int32_t num_layers, int32_t num_heads);

  // Appends one accepted probe. INVALID_ARGUMENT unless scores has num_layers * num_heads
  // finite, non-negative values.
  absl::Status AddProbe(absl::Span<const double> scores);

  int32_t num_probes() const { return num_probes_; }

  // The mean over accepted probes per head, layer-major (zeros when no probe was accepted).
  std::vector<double> Means() const;

  // {"0-0": [...], "0-1": [...], ..., "L-H": [...]} in layer-major order.
  // FAILED_PRECONDITION when no probe was accepted (the reader rejects empty lists).
  absl::StatusOr<std::string> ToJson() const;

 private:
  int32_t num_layers_;
  int32_t num_heads_;
  int32_t num_probes_ = 0;
  std::vector<std::vector<double>> per_head_;  // [num_layers * num_heads][num_probes]
};

}  // namespace hkv
