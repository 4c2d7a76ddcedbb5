#pragma once
// Head importance scores published with HeadKV (FYYFU/HeadKV, Important_Head/head_score/):
// a JSON object {"layer-head": [score of each accepted probe, ...]} with query-head indices.
// A head's importance is the mean of its list, normalised so that all heads sum to 1.
//
// Thread-safe: HeadScores is immutable plain data once loaded.

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace hkv {

struct HeadScores {
  int32_t num_layers = 0;
  int32_t num_heads = 0;
  std::vector<double> importance;  // [num_layers * num_heads], layer-major, sums to 1.
  std::string path;                // Where it came from ("" when built in memory).

  double at(int32_t layer, int32_t head) const {
    return importance[static_cast<size_t>(layer) * num_heads + head];
  }
};

// Parses a score file's text. INVALID_ARGUMENT naming the problem for malformed JSON, bad keys,
// non-numeric / negative / non-finite / empty lists, missing or duplicate (layer, head) pairs,
// and all-zero scores. `source` names the text in errors.
absl::StatusOr<HeadScores> ParseHeadScores(const std::string& json_text,
                                           const std::string& source);

// Reads and parses the score file at `path` (NOT_FOUND when it cannot be read).
absl::StatusOr<HeadScores> LoadHeadScores(const std::string& path);

// INVALID_ARGUMENT naming both shapes unless `scores` is num_layers x num_q_heads.
absl::Status CheckShape(const HeadScores& scores, int32_t num_layers, int32_t num_q_heads);

// Sums the importance of each GQA group: query head h goes to kv head h / (H / num_kv_heads).
// REQUIRES: num_kv_heads >= 1 and scores.num_heads % num_kv_heads == 0.
HeadScores GroupByKvHead(const HeadScores& scores, int32_t num_kv_heads);

}  // namespace hkv
