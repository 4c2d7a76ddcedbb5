#pragma once
// HeadBudgetPlanner turns a KvPolicy into a HeadBudgetPlan: how many prompt tokens each
// (layer, head) keeps after a compressed prefill. Heads are KV heads for kv_head granularity
// and query heads for query_head granularity. With b = B - w (budget minus window):
//
//   snapkv     cap[l][h] = b
//   pyramidkv  min = b / 20, max = 2b - min, step = (max - min) / (L - 1) (integer divisions,
//              as KVCache-Factory), cap[l][h] = max - l * step
//   adakv      adaptive: layer l shares layer_budget[l] = H * b among its heads at prefill
//              (AdaKvAllocate in headkv/selection.h)
//   headkv     q = b // beta (Python float floor division), floor = b - q,
//              cap[l][h] = round_half_even(score[l][h] * q * L * H + floor)
//
// A head keeps min(cap, n - w) + w of an n-token prompt, or all n when n <= B.
//
// Thread-safe: Plan() is a pure function; HeadBudgetPlan is immutable plain data.

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "headkv/kv_policy.h"

namespace hkv {

struct HeadBudgetPlan {
  KvPolicyName policy = KvPolicyName::kFull;
  int32_t num_layers = 0;
  int32_t num_heads = 0;
  int32_t window = 0;
  int32_t budget = 0;  // B, window included.
  bool adaptive = false;
  std::vector<int32_t> capacity;      // [L*H] static plans: tokens kept besides the window.
  std::vector<int32_t> layer_budget;  // [L] adaptive plans: per-layer total besides windows.

  // Returns false for full, and when n <= budget (SnapKV's rule: no compression when the
  // prompt fits).
  bool compresses(int32_t n) const;
  // Returns tokens kept per (layer, head) [L*H] of an n-token prompt: n when !compresses(n),
  // else min(cap, n - w) + w. REQUIRES: !adaptive || !compresses(n).
  std::vector<int32_t> KeptTokens(int32_t n) const;
  // Returns the most tokens (windows included) one layer keeps over all its heads; for adaptive
  // plans min(layer_budget, H * (n - w)) + H * w when compressing. Sums over heads are 64-bit:
  // H * n passes 2^31 for long prompts over many heads.
  int64_t MaxKeptPerLayer(int32_t n) const;
  // Same for one layer.
  int64_t LayerKeptBound(int32_t layer, int32_t n) const;
  // Returns an upper bound on the head-blocks layer `layer` needs for an n-token prompt, each
  // head rounding up to whole blocks: exact for static plans, a bound for adaptive ones.
  int64_t MaxBlocksPerLayer(int32_t layer, int32_t n, int32_t block_size) const;
};

class HeadBudgetPlanner {
 public:
  // Plans `policy` for a model of num_layers x num_heads. INVALID_ARGUMENT for an invalid
  // policy (ValidatePolicy), non-positive sizes, headkv scores whose shape does not fit
  // (kv_head granularity groups query-head scores whose head count is a multiple of
  // num_heads; query_head needs them to match exactly), or a budget so large that a cap or a
  // layer budget passes 2^31 - 1 (pyramidkv's first layer keeps ~2B, adakv's layers H * B).
  // The arithmetic is 64-bit, so no budget wraps to a small one.
  static absl::StatusOr<HeadBudgetPlan> Plan(const KvPolicy& policy, int32_t num_layers,
                                             int32_t num_heads);
};

// Returns {"num_layers": L, "num_heads": H, "capacity": [[cap per head] per layer]} (capacity is
// [] for full and adaptive plans; adaptive plans add "layer_budget": [...]).
std::string PlanToJson(const HeadBudgetPlan& plan);

// Python's float floor division a // b for positive finite operands (fmod-exact, so e.g.
// 101 // 1.01 == 99 although floor(101 / 1.01) == 100), as HeadKV's reference computes it.
double PyFloorDiv(double a, double b);

}  // namespace hkv
