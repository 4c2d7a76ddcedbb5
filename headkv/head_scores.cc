#include "headkv/head_scores.h"

#include <cmath>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/logging.h"
#include "common/mapped_file.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"

namespace hkv {
namespace {

// Parses "layer-head" into non-negative ints.
bool ParseKey(const std::string& key, int32_t* layer, int32_t* head) {
  std::vector<std::string> parts = absl::StrSplit(key, '-');
  return parts.size() == 2 && absl::SimpleAtoi(parts[0], layer) &&
         absl::SimpleAtoi(parts[1], head) && *layer >= 0 && *head >= 0 && *layer < (1 << 20) &&
         *head < (1 << 20);
}

// Mean of one head's probe scores, validating every entry.
absl::StatusOr<double> MeanOfList(const nlohmann::json& list, const std::string& key,
                                  const std::string& source) {
  if (!list.is_array() || list.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "head score file ", source, ": value of \"", key, "\" must be a non-empty list"));
  }
  double sum = 0.0;
  for (size_t i = 0; i < list.size(); ++i) {
    const nlohmann::json& v = list[i];
    if (!v.is_number()) {
      return absl::InvalidArgumentError(absl::StrCat("head score file ", source, ": \"", key,
                                                     "\"[", i, "] is not a number: ", v.dump()));
    }
    const double x = v.get<double>();
    if (!std::isfinite(x) || x < 0.0) {
      return absl::InvalidArgumentError(absl::StrCat("head score file ", source, ": \"", key,
                                                     "\"[", i, "] = ", x,
                                                     " (scores must be finite and >= 0)"));
    }
    sum += x;
  }
  return sum / static_cast<double>(list.size());
}

}  // namespace

absl::StatusOr<HeadScores> ParseHeadScores(const std::string& json_text,
                                           const std::string& source) {
  nlohmann::json doc = nlohmann::json::parse(json_text, nullptr, /*allow_exceptions=*/false);
  if (doc.is_discarded()) {
    return absl::InvalidArgumentError(
        absl::StrCat("head score file ", source, ": not valid JSON"));
  }
  if (!doc.is_object() || doc.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "head score file ", source, ": expected a non-empty object {\"layer-head\": [...]}"));
  }
  std::vector<std::pair<std::pair<int32_t, int32_t>, double>> entries;
  int32_t max_layer = -1;
  int32_t max_head = -1;
  for (const auto& [key, value] : doc.items()) {
    int32_t layer = 0;
    int32_t head = 0;
    if (!ParseKey(key, &layer, &head)) {
      return absl::InvalidArgumentError(absl::StrCat("head score file ", source, ": key \"", key,
                                                     "\" is not of the form \"layer-head\""));
    }
    HKV_ASSIGN_OR_RETURN(double mean, MeanOfList(value, key, source));
    entries.push_back({{layer, head}, mean});
    max_layer = std::max(max_layer, layer);
    max_head = std::max(max_head, head);
  }
  HeadScores out;
  out.num_layers = max_layer + 1;
  out.num_heads = max_head + 1;
  out.path = source;
  const int64_t cells = static_cast<int64_t>(out.num_layers) * out.num_heads;
  if (cells > (int64_t{1} << 24)) {
    return absl::InvalidArgumentError(absl::StrCat("head score file ", source, ": shape ",
                                                   out.num_layers, "x", out.num_heads,
                                                   " is implausibly large"));
  }
  out.importance.assign(cells, 0.0);
  std::vector<bool> seen(cells, false);
  double total = 0.0;
  for (const auto& [lh, mean] : entries) {
    const int64_t i = static_cast<int64_t>(lh.first) * out.num_heads + lh.second;
    if (seen[i]) {
      return absl::InvalidArgumentError(absl::StrCat("head score file ", source, ": layer ",
                                                     lh.first, " head ", lh.second,
                                                     " appears more than once"));
    }
    seen[i] = true;
    out.importance[i] = mean;
    total += mean;
  }
  for (int64_t i = 0; i < cells; ++i) {
    if (!seen[i]) {
      return absl::InvalidArgumentError(absl::StrCat(
          "head score file ", source, ": missing key \"", i / out.num_heads, "-",
          i % out.num_heads, "\" (keys must cover every layer 0..", out.num_layers - 1,
          " and head 0..", out.num_heads - 1, ")"));
    }
  }
  if (!(total > 0.0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("head score file ", source, ": every head's score is zero"));
  }
  for (double& v : out.importance) v /= total;
  return out;
}

absl::StatusOr<HeadScores> LoadHeadScores(const std::string& path) {
  absl::StatusOr<MappedFile> file = MappedFile::Open(path);
  if (!file.ok()) {
    return absl::Status(file.status().code(), absl::StrCat("cannot read head score file ", path,
                                                           ": ", file.status().message()));
  }
  const std::string text(reinterpret_cast<const char*>(file->data()), file->size());
  return ParseHeadScores(text, path);
}

absl::Status CheckShape(const HeadScores& scores, int32_t num_layers, int32_t num_q_heads) {
  if (scores.num_layers == num_layers && scores.num_heads == num_q_heads) {
    return absl::OkStatus();
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "head score file ", scores.path.empty() ? "(in memory)" : scores.path, " has ",
      scores.num_layers, " layers x ", scores.num_heads, " heads but the model has ", num_layers,
      " layers x ", num_q_heads, " query heads"));
}

HeadScores GroupByKvHead(const HeadScores& scores, int32_t num_kv_heads) {
  HKV_CHECK(num_kv_heads >= 1 && scores.num_heads % num_kv_heads == 0)
      << "num_heads=" << scores.num_heads << " num_kv_heads=" << num_kv_heads;
  const int32_t group = scores.num_heads / num_kv_heads;
  HeadScores out;
  out.num_layers = scores.num_layers;
  out.num_heads = num_kv_heads;
  out.path = scores.path;
  out.importance.assign(static_cast<size_t>(out.num_layers) * num_kv_heads, 0.0);
  for (int32_t l = 0; l < scores.num_layers; ++l) {
    for (int32_t h = 0; h < scores.num_heads; ++h) {
      out.importance[static_cast<size_t>(l) * num_kv_heads + h / group] += scores.at(l, h);
    }
  }
  return out;
}

}  // namespace hkv
