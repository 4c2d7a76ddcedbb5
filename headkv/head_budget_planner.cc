#include "headkv/head_budget_planner.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "headkv/head_scores.h"

namespace hkv {
namespace {

constexpr int64_t kMaxPlanValue = std::numeric_limits<int32_t>::max();

// INVALID_ARGUMENT: a plan value (a head's cap, a layer's budget) would not fit an int32.
absl::Status TooLarge(KvPolicyName policy, int32_t budget, const char* what) {
  return absl::InvalidArgumentError(absl::StrCat("KV budget ", budget, " is too large for ",
                                                 std::string(PolicyNameString(policy)), ": ", what,
                                                 " would pass 2^31 - 1 tokens"));
}

// Tokens one head of capacity `cap` keeps of an n-token prompt compressed with window `w`.
// REQUIRES: n > w (a compressed prompt is longer than its budget, which exceeds the window).
int64_t HeadKept(int32_t cap, int32_t n, int32_t w) {
  return std::min<int64_t>(cap, int64_t{n} - w) + w;  // At most n.
}

// Computed in 64 bits: 2 * b overflows an int32 for b > 2^30.
absl::StatusOr<std::vector<int32_t>> PyramidCaps(int32_t budget, int64_t b, int32_t num_layers,
                                                 int32_t num_heads) {
  std::vector<int32_t> caps(static_cast<size_t>(num_layers) * num_heads, static_cast<int32_t>(b));
  if (num_layers == 1) return caps;
  const int64_t min_cap = b / 20;
  const int64_t max_cap = 2 * b - min_cap;
  if (max_cap > kMaxPlanValue) return TooLarge(KvPolicyName::kPyramidKv, budget, "layer 0's cap");
  const int64_t step = (max_cap - min_cap) / (num_layers - 1);
  for (int32_t l = 0; l < num_layers; ++l) {
    // max_cap - l * step >= min_cap >= 0, and <= max_cap: fits.
    std::fill_n(caps.begin() + static_cast<size_t>(l) * num_heads, num_heads,
                static_cast<int32_t>(max_cap - l * step));
  }
  return caps;
}

absl::StatusOr<std::vector<int32_t>> HeadKvCaps(const KvPolicy& policy, int64_t b,
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
  // In doubles (exact below 2^53): pool = q * L * H overflows an int32 for large budgets.
  const double pooled = PyFloorDiv(static_cast<double>(b), policy.beta);
  const double floor_cap = static_cast<double>(b) - pooled;
  const double pool = pooled * num_layers * num_heads;
  std::vector<int32_t> caps(scores->importance.size());
  for (size_t i = 0; i < caps.size(); ++i) {
    // std::nearbyint rounds half to even in the default rounding mode, as torch.round does.
    const double cap = std::nearbyint(scores->importance[i] * pool + floor_cap);
    // Casting a double past the int32 range is undefined: check it first.
    if (!(cap <= kMaxPlanValue)) return TooLarge(KvPolicyName::kHeadKv, policy.budget, "a cap");
    caps[i] = static_cast<int32_t>(cap);
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
  for (size_t i = 0; i < rows; ++i) {
    kept[i] = static_cast<int32_t>(HeadKept(capacity[i], n, window));
  }
  return kept;
}

int64_t HeadBudgetPlan::LayerKeptBound(int32_t layer, int32_t n) const {
  if (!compresses(n)) return int64_t{num_heads} * n;
  if (adaptive) {
    const int64_t past = int64_t{num_heads} * (int64_t{n} - window);
    return std::min<int64_t>(layer_budget[layer], past) + int64_t{num_heads} * window;
  }
  int64_t sum = 0;
  for (int32_t h = 0; h < num_heads; ++h) {
    sum += HeadKept(capacity[static_cast<size_t>(layer) * num_heads + h], n, window);
  }
  return sum;
}

int64_t HeadBudgetPlan::MaxKeptPerLayer(int32_t n) const {
  int64_t best = 0;
  for (int32_t l = 0; l < num_layers; ++l) best = std::max(best, LayerKeptBound(l, n));
  return best;
}

int64_t HeadBudgetPlan::MaxBlocksPerLayer(int32_t layer, int32_t n, int32_t block_size) const {
  const int64_t bs = block_size;
  const int64_t per_head_max = (int64_t{n} + bs - 1) / bs;
  if (!compresses(n)) return num_heads * per_head_max;
  if (!adaptive) {
    int64_t blocks = 0;
    for (int32_t h = 0; h < num_heads; ++h) {
      blocks +=
          (HeadKept(capacity[static_cast<size_t>(layer) * num_heads + h], n, window) + bs - 1) / bs;
    }
    return blocks;
  }
  // Each head rounds up by at most block_size - 1 tokens.
  const int64_t bound = (LayerKeptBound(layer, n) + num_heads * (bs - 1)) / bs;
  return std::min<int64_t>(bound, num_heads * per_head_max);
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
  // ValidatePolicy: budget > window >= 1 for compressing policies, so 0 < b < 2^31.
  const int64_t b = int64_t{policy.budget} - policy.window;
  const size_t rows = static_cast<size_t>(num_layers) * num_heads;
  switch (policy.name) {
    case KvPolicyName::kFull:
      plan.budget = 0;
      break;
    case KvPolicyName::kSnapKv:
      plan.capacity.assign(rows, static_cast<int32_t>(b));
      break;
    case KvPolicyName::kPyramidKv: {
      HKV_ASSIGN_OR_RETURN(plan.capacity, PyramidCaps(policy.budget, b, num_layers, num_heads));
      break;
    }
    case KvPolicyName::kAdaKv: {
      // H * b overflows an int32 for b > 2^31 / H (2^30 + 100 over 4 heads wrapped to 368).
      const int64_t layer_budget = num_heads * b;
      if (layer_budget > kMaxPlanValue) return TooLarge(policy.name, policy.budget, "a layer");
      plan.adaptive = true;
      plan.layer_budget.assign(num_layers, static_cast<int32_t>(layer_budget));
      break;
    }
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
