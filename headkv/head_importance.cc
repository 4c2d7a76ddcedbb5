#include "headkv/head_importance.h"

#include <algorithm>
#include <cmath>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"

namespace hkv {
namespace {

// INVALID_ARGUMENT unless `layer` is in range and `rows` is num_q_heads x prompt_len.
absl::StatusOr<int32_t> PromptLen(int32_t layer, int32_t num_layers, int32_t num_q_heads,
                                  size_t num_rows) {
  if (layer < 0 || layer >= num_layers) {
    return absl::InvalidArgumentError(
        absl::StrCat("layer ", layer, " is outside [0, ", num_layers, ")"));
  }
  if (num_rows == 0 || num_rows % num_q_heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat("got ", num_rows,
                                                   " attention weights, not num_q_heads (",
                                                   num_q_heads, ") x prompt_len (>= 1)"));
  }
  return static_cast<int32_t>(num_rows / num_q_heads);
}

// NaN would break partial_sort's strict weak ordering, so it is refused up front.
absl::Status CheckFinite(absl::Span<const float> rows) {
  for (size_t i = 0; i < rows.size(); ++i) {
    if (!std::isfinite(rows[i])) {
      return absl::InvalidArgumentError(absl::StrCat("attention weight ", i, " is not finite"));
    }
  }
  return absl::OkStatus();
}

void CheckShape(int32_t num_layers, int32_t num_q_heads, AnswerSpan span) {
  HKV_CHECK(num_layers >= 1);
  HKV_CHECK(num_q_heads >= 1);
  HKV_CHECK(span.begin >= 0);
  HKV_CHECK(span.begin < span.end);
}

// The position of the highest weight, the lower position on ties.
int32_t ArgMax(absl::Span<const float> row) {
  int32_t best = 0;
  for (int32_t p = 1; p < static_cast<int32_t>(row.size()); ++p) {
    if (row[p] > row[best]) best = p;
  }
  return best;
}

// INVALID_ARGUMENT unless `layer` is in range and the probe arrays are [num_q_heads, k >= 1]
// with finite weights; returns k.
absl::StatusOr<int32_t> TopNWidth(int32_t layer, int32_t num_layers, int32_t num_q_heads,
                                  absl::Span<const int32_t> positions,
                                  absl::Span<const float> weights) {
  if (positions.size() != weights.size()) {
    return absl::InvalidArgumentError(absl::StrCat("probe has ", positions.size(),
                                                   " positions but ", weights.size(), " weights"));
  }
  HKV_ASSIGN_OR_RETURN(const int32_t k,
                       PromptLen(layer, num_layers, num_q_heads, positions.size()));
  HKV_RETURN_IF_ERROR(CheckFinite(weights));
  return k;
}

}  // namespace

R2ProbeScorer::R2ProbeScorer(int32_t num_layers, int32_t num_q_heads, AnswerSpan span)
    : num_layers_(num_layers), num_q_heads_(num_q_heads), span_(span) {
  CheckShape(num_layers, num_q_heads, span);
  scores_.assign(static_cast<size_t>(num_layers) * num_q_heads, 0.0);
}

absl::Status R2ProbeScorer::AddStep(int32_t layer, absl::Span<const float> rows) {
  absl::StatusOr<int32_t> len = PromptLen(layer, num_layers_, num_q_heads_, rows.size());
  if (!len.ok()) return len.status();
  HKV_RETURN_IF_ERROR(CheckFinite(rows));
  const int32_t prompt_len = *len;
  const int32_t n = span_.size();
  const int32_t top = std::min(n, prompt_len);  // torch.topk would fail; take every position.
  order_.resize(prompt_len);
  for (int32_t h = 0; h < num_q_heads_; ++h) {
    const absl::Span<const float> row =
        rows.subspan(static_cast<size_t>(h) * prompt_len, prompt_len);
    for (int32_t p = 0; p < prompt_len; ++p) order_[p] = p;
    std::partial_sort(
        order_.begin(), order_.begin() + top, order_.end(),
        [&row](int32_t a, int32_t b) { return row[a] != row[b] ? row[a] > row[b] : a < b; });
    double sum = 0.0;
    for (int32_t k = 0; k < top; ++k) {
      const int32_t p = order_[k];
      if (p >= span_.begin && p < span_.end) sum += row[p];
    }
    scores_[static_cast<size_t>(layer) * num_q_heads_ + h] += sum / n;
  }
  return absl::OkStatus();
}

absl::Status R2ProbeScorer::AddTopN(int32_t layer, absl::Span<const int32_t> positions,
                                    absl::Span<const float> weights) {
  HKV_ASSIGN_OR_RETURN(const int32_t k,
                       TopNWidth(layer, num_layers_, num_q_heads_, positions, weights));
  const int32_t n = span_.size();
  const int32_t top = std::min(n, k);
  for (int32_t h = 0; h < num_q_heads_; ++h) {
    double sum = 0.0;
    for (int32_t i = 0; i < top; ++i) {
      const size_t at = static_cast<size_t>(h) * k + i;
      if (positions[at] >= span_.begin && positions[at] < span_.end) sum += weights[at];
    }
    scores_[static_cast<size_t>(layer) * num_q_heads_ + h] += sum / n;
  }
  return absl::OkStatus();
}

RProbeScorer::RProbeScorer(int32_t num_layers, int32_t num_q_heads, AnswerSpan span,
                           std::vector<int32_t> prompt_ids)
    : num_layers_(num_layers),
      num_q_heads_(num_q_heads),
      span_(span),
      prompt_ids_(std::move(prompt_ids)) {
  CheckShape(num_layers, num_q_heads, span);
  scores_.assign(static_cast<size_t>(num_layers) * num_q_heads, 0.0);
}

absl::Status RProbeScorer::AddStep(int32_t layer, absl::Span<const float> rows, int32_t token) {
  absl::StatusOr<int32_t> len = PromptLen(layer, num_layers_, num_q_heads_, rows.size());
  if (!len.ok()) return len.status();
  HKV_RETURN_IF_ERROR(CheckFinite(rows));
  const int32_t prompt_len = *len;
  if (prompt_len != static_cast<int32_t>(prompt_ids_.size())) {
    return absl::InvalidArgumentError(absl::StrCat("attention rows cover ", prompt_len,
                                                   " positions but the prompt has ",
                                                   prompt_ids_.size(), " tokens"));
  }
  for (int32_t h = 0; h < num_q_heads_; ++h) {
    const int32_t p = ArgMax(rows.subspan(static_cast<size_t>(h) * prompt_len, prompt_len));
    if (p >= span_.begin && p < span_.end && prompt_ids_[p] == token) {
      scores_[static_cast<size_t>(layer) * num_q_heads_ + h] += 1.0 / span_.size();
    }
  }
  return absl::OkStatus();
}

absl::Status RProbeScorer::AddTopN(int32_t layer, absl::Span<const int32_t> positions,
                                   absl::Span<const float> weights, int32_t token) {
  HKV_ASSIGN_OR_RETURN(const int32_t k,
                       TopNWidth(layer, num_layers_, num_q_heads_, positions, weights));
  for (int32_t h = 0; h < num_q_heads_; ++h) {
    const int32_t p = positions[static_cast<size_t>(h) * k];
    if (p < 0 || p >= static_cast<int32_t>(prompt_ids_.size())) {
      return absl::InvalidArgumentError(absl::StrCat("probe position ", p, " is outside the ",
                                                     prompt_ids_.size(), " prompt tokens"));
    }
    if (p >= span_.begin && p < span_.end && prompt_ids_[p] == token) {
      scores_[static_cast<size_t>(layer) * num_q_heads_ + h] += 1.0 / span_.size();
    }
  }
  return absl::OkStatus();
}

HeadScoreTable::HeadScoreTable(int32_t num_layers, int32_t num_heads)
    : num_layers_(num_layers), num_heads_(num_heads) {
  HKV_CHECK(num_layers >= 1);
  HKV_CHECK(num_heads >= 1);
  per_head_.resize(static_cast<size_t>(num_layers) * num_heads);
}

absl::Status HeadScoreTable::AddProbe(absl::Span<const double> scores) {
  if (scores.size() != per_head_.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("probe has ", scores.size(), " head scores, expected ", per_head_.size()));
  }
  for (size_t i = 0; i < scores.size(); ++i) {
    if (!std::isfinite(scores[i]) || scores[i] < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("head score ", i, " is ", scores[i], "; must be finite and >= 0"));
    }
  }
  for (size_t i = 0; i < scores.size(); ++i) per_head_[i].push_back(scores[i]);
  ++num_probes_;
  return absl::OkStatus();
}

std::vector<double> HeadScoreTable::Means() const {
  std::vector<double> means(per_head_.size(), 0.0);
  if (num_probes_ == 0) return means;
  for (size_t i = 0; i < per_head_.size(); ++i) {
    double sum = 0.0;
    for (double s : per_head_[i]) sum += s;
    means[i] = sum / num_probes_;
  }
  return means;
}

absl::StatusOr<std::string> HeadScoreTable::ToJson() const {
  if (num_probes_ == 0) {
    return absl::FailedPreconditionError("no probe was accepted; nothing to write");
  }
  // ordered_json keeps insertion (layer-major) order; plain json would sort "0-10" before "0-2".
  nlohmann::ordered_json out = nlohmann::ordered_json::object();
  for (int32_t l = 0; l < num_layers_; ++l) {
    for (int32_t h = 0; h < num_heads_; ++h) {
      out[absl::StrCat(l, "-", h)] = per_head_[static_cast<size_t>(l) * num_heads_ + h];
    }
  }
  return out.dump();
}

}  // namespace hkv
