#pragma once
// One check of a Batch's shape (common/batch.h) for everyone who indexes by it: the CPU and
// CUDA workers, tensor-parallel rank slicing, and the multi-node step codec. A batch that
// passes can be walked row by row without reading outside its arrays.
//
// Pure functions; thread-safe. Failures are INVALID_ARGUMENT "malformed batch: ..." naming the
// first problem.

#include <cstdint>

#include "absl/status/status.h"
#include "common/batch.h"

namespace hkv {

// The CSR page table matches the batch: non-negative shape, kv_indptr [rows + 1] starting at 0,
// non-decreasing and ending at kv_indices.size(). A batch with a kv_delta may leave both empty;
// its delta then matches the batch's shape and lists the batch's sequences in order.
absl::Status ValidatePageTable(const Batch& batch);

// ValidatePageTable, and kv_len_before and kv_len_after hold [rows] entries.
absl::Status ValidateBatchShape(const Batch& batch);

// Each row's lengths fit its blocks: 0 <= kv_len_before <= kv_len_after <= blocks x
// block_size, with block_size > 0. REQUIRES: ValidateBatchShape(batch) is OK.
absl::Status ValidateRowLengths(const Batch& batch);

// Each sequence's attention probe (SequenceStep::probe_*) is off, or well formed: top_n in
// [1, kMaxProbeTopN], a one-token plain step, 1 <= probe_prompt_len <= start_pos + 1, every row
// of the sequence full (kv_len_before = start_pos, kv_len_after = start_pos + 1).
// REQUIRES: ValidateBatchShape(batch) is OK.
absl::Status ValidateProbes(const Batch& batch);

// Every block id of the page table, of a delta's new blocks, of the block copies and of the
// adaptive reservations (SequenceStep::layer_blocks) lies in [0, num_blocks).
absl::Status ValidateBlockIds(const Batch& batch, int64_t num_blocks);

}  // namespace hkv
