#pragma once
// Tensor-parallel head placement. Megatron-style sharding gives rank r the KV heads
// [r*H/R, (r+1)*H/R) of every layer; with HeadKV plans the heads keep very different numbers
// of tokens, so one rank can hold far more KV than another (and run out of blocks first).
// BalanceHeadsAcrossRanks picks, per layer, a permutation of the KV heads (each rank still gets
// H/R heads of every layer, so weights shard evenly) that evens out each rank's total KV over
// all layers. The permutation is fixed at load time and applied to the q/k/v/o weights.
//
// Thread-safe: pure functions on plain data.

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace hkv {

struct HeadRankAssignment {
  int32_t num_layers = 0;
  int32_t num_heads = 0;  // KV heads per layer.
  int32_t num_ranks = 0;
  // [L * H]: physical slot -> original head. Rank r owns slots [r*H/R, (r+1)*H/R) of each layer,
  // so rank r serves original heads head_of_slot[l*H + r*H/R .. ].
  std::vector<int32_t> head_of_slot;

  int32_t RankOfSlot(int32_t slot) const { return slot / (num_heads / num_ranks); }
};

// Megatron's contiguous placement (identity permutation).
absl::StatusOr<HeadRankAssignment> ContiguousAssignment(int32_t num_layers, int32_t num_heads,
                                                        int32_t num_ranks);

// Balanced placement for per-head loads `load` [L * H] (e.g. tokens kept per KV head, window
// included): per layer, heads in decreasing load go to the rank with the least total load so far
// that still has a free slot in that layer (LPT with per-layer cardinality). INVALID_ARGUMENT
// when num_ranks does not divide num_heads or the sizes disagree.
absl::StatusOr<HeadRankAssignment> BalancedAssignment(absl::Span<const int32_t> load,
                                                      int32_t num_layers, int32_t num_heads,
                                                      int32_t num_ranks);

// Total load per rank [num_ranks] under `assignment`.
std::vector<int64_t> RankLoads(const HeadRankAssignment& assignment,
                               absl::Span<const int32_t> load);

// max(rank load) / mean(rank load): 1.0 is perfect balance.
double Imbalance(absl::Span<const int64_t> rank_loads);

}  // namespace hkv
