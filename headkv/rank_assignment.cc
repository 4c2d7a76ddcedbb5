#include "headkv/rank_assignment.h"

#include <algorithm>
#include <numeric>

#include "absl/strings/str_cat.h"

namespace hkv {
namespace {

absl::Status CheckSizes(int32_t num_layers, int32_t num_heads, int32_t num_ranks) {
  if (num_layers < 1 || num_heads < 1 || num_ranks < 1) {
    return absl::InvalidArgumentError("layers, heads and ranks must be >= 1");
  }
  if (num_heads % num_ranks != 0) {
    return absl::InvalidArgumentError(absl::StrCat("tensor-parallel size ", num_ranks,
                                                   " must divide the ", num_heads, " KV heads"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<HeadRankAssignment> ContiguousAssignment(int32_t num_layers, int32_t num_heads,
                                                        int32_t num_ranks) {
  absl::Status s = CheckSizes(num_layers, num_heads, num_ranks);
  if (!s.ok()) return s;
  HeadRankAssignment a{num_layers, num_heads, num_ranks, {}};
  a.head_of_slot.resize(static_cast<size_t>(num_layers) * num_heads);
  for (int32_t l = 0; l < num_layers; ++l) {
    std::iota(a.head_of_slot.begin() + l * num_heads, a.head_of_slot.begin() + (l + 1) * num_heads,
              0);
  }
  return a;
}

absl::StatusOr<HeadRankAssignment> BalancedAssignment(absl::Span<const int32_t> load,
                                                      int32_t num_layers, int32_t num_heads,
                                                      int32_t num_ranks) {
  absl::Status s = CheckSizes(num_layers, num_heads, num_ranks);
  if (!s.ok()) return s;
  if (load.size() != static_cast<size_t>(num_layers) * num_heads) {
    return absl::InvalidArgumentError(absl::StrCat("load has ", load.size(), " entries, expected ",
                                                   num_layers, " x ", num_heads));
  }
  const int32_t per_rank = num_heads / num_ranks;
  HeadRankAssignment a{num_layers, num_heads, num_ranks, {}};
  a.head_of_slot.resize(load.size());
  std::vector<int64_t> totals(num_ranks, 0);
  // Layers with the largest spread first: they matter most for the final balance.
  std::vector<int32_t> layers(num_layers);
  std::iota(layers.begin(), layers.end(), 0);
  auto spread = [&](int32_t l) {
    auto [lo, hi] = std::minmax_element(load.begin() + l * num_heads,
                                        load.begin() + (l + 1) * num_heads);
    return *hi - *lo;
  };
  std::stable_sort(layers.begin(), layers.end(),
                   [&](int32_t x, int32_t y) { return spread(x) > spread(y); });
  for (int32_t l : layers) {
    std::vector<int32_t> heads(num_heads);
    std::iota(heads.begin(), heads.end(), 0);
    std::stable_sort(heads.begin(), heads.end(), [&](int32_t x, int32_t y) {
      return load[l * num_heads + x] > load[l * num_heads + y];
    });
    std::vector<int32_t> used(num_ranks, 0);
    for (int32_t h : heads) {
      int32_t best = -1;
      for (int32_t r = 0; r < num_ranks; ++r) {
        if (used[r] == per_rank) continue;
        if (best < 0 || totals[r] < totals[best]) best = r;
      }
      a.head_of_slot[l * num_heads + best * per_rank + used[best]] = h;
      ++used[best];
      totals[best] += load[l * num_heads + h];
    }
  }
  return a;
}

std::vector<int64_t> RankLoads(const HeadRankAssignment& a, absl::Span<const int32_t> load) {
  std::vector<int64_t> totals(a.num_ranks, 0);
  for (int32_t l = 0; l < a.num_layers; ++l) {
    for (int32_t slot = 0; slot < a.num_heads; ++slot) {
      totals[a.RankOfSlot(slot)] += load[l * a.num_heads + a.head_of_slot[l * a.num_heads + slot]];
    }
  }
  return totals;
}

double Imbalance(absl::Span<const int64_t> rank_loads) {
  if (rank_loads.empty()) return 1.0;
  const int64_t sum = std::accumulate(rank_loads.begin(), rank_loads.end(), int64_t{0});
  if (sum == 0) return 1.0;
  const int64_t max = *std::max_element(rank_loads.begin(), rank_loads.end());
  return static_cast<double>(max) * rank_loads.size() / sum;
}

}  // namespace hkv
