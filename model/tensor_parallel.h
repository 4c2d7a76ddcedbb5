#pragma once
// Megatron-style tensor-parallel sharding with HeadKV-aware head placement.
//
// Rank r of R holds, for every layer, the KV heads that the placement (headkv/rank_assignment.h)
// puts in its slots, the query heads of those heads' GQA groups, and 1/R of the FFN:
//
//   q/k/v  column-parallel: rows of the heads it owns, in slot order
//   o      row-parallel:    the columns of its query heads -> partial output, all-reduced
//   gate/up column-parallel: rows [r*F/R, (r+1)*F/R)
//   down   row-parallel:    the same columns -> partial output, all-reduced
//
// Heads are independent in attention, so any per-layer permutation of KV heads (with their
// query heads and o columns) leaves the layer's output unchanged; balancing the plan's KV per
// rank costs nothing in accuracy. Thread-safe (pure functions).

#include <vector>

#include "absl/status/statusor.h"
#include "headkv/rank_assignment.h"
#include "model/model_config.h"

namespace hkv {

// The per-rank shape: heads, KV heads and FFN width divided by `tp`. INVALID_ARGUMENT when `tp`
// does not divide them.
absl::StatusOr<ModelConfig> ShardConfig(const ModelConfig& config, int32_t tp);

// Rank `rank`'s weights under `placement` (placement.num_heads == config.num_kv_heads,
// placement.num_ranks == tp). Embedding, final norm and lm_head are replicated.
absl::StatusOr<Model> ShardModel(const Model& model, const HeadRankAssignment& placement,
                                 int32_t rank);

}  // namespace hkv
