#pragma once
// Rank slicing for tensor parallelism, host only: a rank's part of an engine batch. The batch
// lists rows (seq, layer, kv_head) for every global KV head and global block ids; the rank
// keeps the rows of its own heads (in its slot order), with block ids of its pool partition,
// its heads' selection caps, and the block copies that start in its partition.
//
//   global rows of a seq:  (l0,h0) (l0,h1) (l0,h2) (l0,h3) (l1,h0) ...
//   rank 1 of 2 (contiguous): (l0,h2) (l0,h3) (l1,h2) (l1,h3) ...  ids - block_first
//
// Pure function; thread-safe.

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "common/batch.h"

namespace hkv {

// What a rank owns.
struct RankSlice {
  int32_t rank = 0;  // For error messages.
  int32_t num_layers = 0;
  int32_t global_kv_heads = 0;  // KV heads per layer of the whole model.
  // Global KV head of each local (layer, slot) [num_layers * local heads]. Not owned.
  const std::vector<int32_t>* global_head = nullptr;
  int64_t block_first = 0;  // The rank's pool holds global ids [block_first, +num_blocks).
  int64_t num_blocks = 0;
};

// The rank's batch. INVALID_ARGUMENT when the batch's shape is not the model's, a selection
// has the wrong size, or one of the rank's rows lists a block outside its partition.
absl::StatusOr<Batch> RankView(const Batch& global, const RankSlice& slice);

}  // namespace hkv
