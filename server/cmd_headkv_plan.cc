// `hkv headkv-plan`: prints a HeadKV budget plan for a score file.

#include <iostream>

#include "absl/strings/str_format.h"
#include "headkv/head_budget_planner.h"
#include "headkv/head_scores.h"
#include "server/commands.h"

namespace hkv {

int RunHeadkvPlan(const HeadkvPlanOptions& options) {
  auto fail = [](const absl::Status& s) {
    std::cerr << "hkv headkv-plan: " << s.message() << "\n";
    return 1;
  };
  if (options.scores.empty()) return fail(absl::InvalidArgumentError("--scores FILE is required"));
  auto scores = LoadHeadScores(options.scores);
  if (!scores.ok()) return fail(scores.status());
  auto granularity = ParseGranularity(options.granularity);
  if (!granularity.ok()) return fail(granularity.status());
  KvPolicy policy;
  policy.name = KvPolicyName::kHeadKv;
  policy.budget = options.budget;
  policy.beta = options.beta;
  policy.granularity = *granularity;
  int32_t heads = scores->num_heads;
  if (*granularity == Granularity::kKvHead) {
    const int32_t kv_heads = options.kv_heads > 0 ? options.kv_heads : scores->num_heads;
    if (kv_heads > scores->num_heads || scores->num_heads % kv_heads != 0) {
      return fail(absl::InvalidArgumentError(absl::StrFormat(
          "--kv-heads %d must divide the score file's %d query heads", kv_heads,
          scores->num_heads)));
    }
    policy.scores = std::make_shared<const HeadScores>(GroupByKvHead(*scores, kv_heads));
    heads = kv_heads;
  } else {
    policy.scores = std::make_shared<const HeadScores>(std::move(*scores));
  }
  absl::Status valid = ValidatePolicy(policy);
  if (!valid.ok()) return fail(valid);
  auto plan = HeadBudgetPlanner::Plan(policy, policy.scores->num_layers, heads);
  if (!plan.ok()) return fail(plan.status());
  if (options.json) {
    std::cout << PlanToJson(*plan) << "\n";
    return 0;
  }
  int64_t total = 0;
  int32_t lo = INT32_MAX, hi = 0;
  for (int32_t c : plan->capacity) {
    total += c;
    lo = std::min(lo, c);
    hi = std::max(hi, c);
  }
  std::cout << absl::StrFormat(
      "headkv plan: %d layers x %d heads (%s), budget %d, beta %.4g\n"
      "  capacity (window excluded): total %d, mean %.2f, min %d, max %d\n",
      plan->num_layers, plan->num_heads, options.granularity, options.budget, options.beta, total,
      static_cast<double>(total) / plan->capacity.size(), lo, hi);
  for (int32_t l = 0; l < plan->num_layers; ++l) {
    std::cout << absl::StrFormat("  layer %2d:", l);
    for (int32_t h = 0; h < plan->num_heads; ++h) {
      std::cout << " " << plan->capacity[l * plan->num_heads + h];
    }
    std::cout << "\n";
  }
  return 0;
}

}  // namespace hkv
