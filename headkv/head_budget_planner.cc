#include "headkv/head_budget_planner.h"

#include <algorithm>
#include <cmath>
#include <memory>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "headkv/head_scores.h"

namespace hkv {
namespace {

std::vector<int32_t> PyramidCaps(int32_t b, int32_t num_layers, int32_t num_heads) {
  std::vector<int32_t> caps(static_cast<size_t>(num_layers) * num_heads, b);
  if (num_layers == 1) return caps;
  const int32_t min_cap = b / 20;
  const int32_t max_cap = 2 * b - min_cap;
  const int32_t step = (max_cap - min_cap) / (num_layers - 1);
  for (int32_t l = 0; l < num_layers; ++l) {
    std::fill_n(caps.begin() + static_cast<size_t>(l) * num_heads, num_heads, max_cap - l * step);
  }
  return caps;
}

absl::StatusOr<std::vector<int32_t>> HeadKvCaps(const KvPolicy& policy, int32_t b,
                                                int32_t num_layers, int32_t num_heads) {
  const HeadScores& raw = *policy.scores;
  HeadScores grouped;
  const HeadScores* scores = &raw;
  if (policy.granularity == Granularity::kKvHead && raw.num_layers == num_layers &&
      raw.num_heads != num_heads && raw.num_heads % num_heads == 0) {
    grouped = GroupByKvHead(raw, num_heads);
    scores = &grouped;
  }
  if (scores->num_layers != num_layers || scores->num_heads != num_heads) {
    return absl::InvalidArgumentError(absl::StrCat(
        "head score file ", raw.path.empty() ? "(in memory)" : raw.path, " has ", raw.num_layers,
        " layers x ", raw.num_heads, " heads, which does not fit a plan of ", num_layers,
        " layers x ", num_heads, " ", std::string(GranularityString(policy.granularity)), "s"));
  }
  const double pooled = PyFloorDiv(b, policy.beta);
  const double floor_cap = b - pooled;
  const double pool = pooled * num_layers * num_heads;
  std::vector<int32_t> caps(scores->importance.size());
  for (size_t i = 0; i < caps.size(); ++i) {
    // std::nearbyint rounds half to even in the default rounding mode, as torch.round does.
    caps[i] = static_cast<int32_t>(std::nearbyint(scores->importance[i] * pool + floor_cap));
  }
  return caps;
}

}  // namespace

double PyFloorDiv(double a, double b) {
  const double mod = std::fmod(a, b);
  const double div = (a - mod) / b;
  double floordiv = std::floor(div);
  if (div - floordiv > 0.5) floordiv += 1.0;
  return floordiv;
}

bool HeadBudgetPlan::compresses(int32_t n) const {
  return policy != KvPolicyName::kFull && n > budget;
}

std::vector<int32_t> HeadBudgetPlan::KeptTokens(int32_t n) const {
  const size_t rows = static_cast<size_t>(num_layers) * num_heads;
  if (!compresses(n)) return std::vector<int32_t>(rows, n);
  HKV_CHECK(!adaptive) << "KeptTokens is decided at prefill for adaptive policy "
                       << PolicyNameString(policy);
  std::vector<int32_t> kept(rows);
  for (size_t i = 0; i < rows; ++i) kept[i] = std::min(capacity[i], n - window) + window;
  return kept;
}

int32_t HeadBudgetPlan::LayerKeptBound(int32_t layer, int32_t n) const {
  if (!compresses(n)) return num_heads * n;
  if (adaptive) {
    const int64_t past = static_cast<int64_t>(num_heads) * (n - window);
    return static_cast<int32_t>(std::min<int64_t>(layer_budget[layer], past) +
                                static_cast<int64_t>(num_heads) * window);
  }
  int32_t sum = 0;
  for (int32_t h = 0; h < num_heads; ++h) {
    sum += std::min(capacity[static_cast<size_t>(layer) * num_heads + h], n - window) + window;
  }
  return sum;
}

int32_t HeadBudgetPlan::MaxKeptPerLayer(int32_t n) const {
  int32_t best = 0;
  for (int32_t l = 0; l < num_layers; ++l) best = std::max(best, LayerKeptBound(l, n));
  return best;
}

int32_t HeadBudgetPlan::MaxBlocksPerLayer(int32_t layer, int32_t n, int32_t block_size) const {
  const int32_t per_head_max = (n + block_size - 1) / block_size;
  if (!adaptive || !compresses(n)) {
    if (!compresses(n)) return num_heads * per_head_max;
    int32_t blocks = 0;
    for (int32_t h = 0; h < num_heads; ++h) {
      const int32_t kept =
          std::min(capacity[static_cast<size_t>(layer) * num_heads + h], n - window) + window;
      blocks += (kept + block_size - 1) / block_size;
    }
    return blocks;
  }
  // Each head rounds up by at most block_size - 1 tokens.
  const int64_t bound =
      (static_cast<int64_t>(LayerKeptBound(layer, n)) + num_heads * (block_size - 1)) /
      block_size;
  return static_cast<int32_t>(std::min<int64_t>(bound, int64_t{num_heads} * per_head_max));
}

absl::StatusOr<HeadBudgetPlan> HeadBudgetPlanner::Plan(const KvPolicy& policy,
                                                       int32_t num_layers, int32_t num_heads) {
  HKV_RETURN_IF_ERROR(ValidatePolicy(policy));
  if (num_layers < 1 || num_heads < 1) {
    return absl::InvalidArgumentError(absl::StrCat("cannot plan KV budgets for ", num_layers,
                                                   " layers x ", num_heads, " heads"));
  }
  HeadBudgetPlan plan;
  plan.policy = policy.name;
  plan.num_layers = num_layers;
  plan.num_heads = num_heads;
  plan.window = policy.window;
  plan.budget = policy.budget;
  const int32_t b = policy.budget - policy.window;
  const size_t rows = static_cast<size_t>(num_layers) * num_heads;
  switch (policy.name) {
    case KvPolicyName::kFull:
      plan.budget = 0;
      break;
    case KvPolicyName::kSnapKv:
      plan.capacity.assign(rows, b);
      break;
    case KvPolicyName::kPyramidKv:
      plan.capacity = PyramidCaps(b, num_layers, num_heads);
      break;
    case KvPolicyName::kAdaKv:
      plan.adaptive = true;
      plan.layer_budget.assign(num_layers, num_heads * b);
      break;
    case KvPolicyName::kHeadKv: {
      HKV_ASSIGN_OR_RETURN(plan.capacity, HeadKvCaps(policy, b, num_layers, num_heads));
      break;
    }
  }
  return plan;
}

std::string PlanToJson(const HeadBudgetPlan& plan) {
  std::string out = absl::StrCat("{\"num_layers\": ", plan.num_layers,
                                 ", \"num_heads\": ", plan.num_heads, ", \"capacity\": [");
  if (!plan.capacity.empty()) {
    for (int32_t l = 0; l < plan.num_layers; ++l) {
      const auto begin = plan.capacity.begin() + static_cast<size_t>(l) * plan.num_heads;
      absl::StrAppend(&out, l == 0 ? "" : ", ", "[",
                      absl::StrJoin(begin, begin + plan.num_heads, ", "), "]");
    }
  }
  absl::StrAppend(&out, "]");
  if (plan.adaptive) {
    absl::StrAppend(&out, ", \"layer_budget\": [", absl::StrJoin(plan.layer_budget, ", "), "]");
  }
  absl::StrAppend(&out, "}");
  return out;
}

}  // namespace hkv
