#pragma once
// Page-table changes between two exports of the block manager (block_manager/kv_cache_manager.h
// ExportDelta), applied by a receiver that keeps the tables (block_manager/page_table_mirror.h
// on the host; a device-resident table for the CUDA worker).
//
// Per-head paging gives a sequence num_layers * num_kv_heads rows (256 for Llama-3-8B); from one
// step to the next most rows only grow by the step's tokens inside their last block, and a row
// takes a new block once every block_size tokens. A delta therefore carries, per sequence of the
// step, the tokens every row grew by (`grow_all`) and only the rows whose block list changed or
// whose length changed otherwise (new blocks, a copy-on-write of a shared last block, a shrink
// after selection, an adaptive commit): for each such row, how many leading blocks the receiver
// keeps, the blocks that follow them, and the row's token count.
//
// Applying a delta, in this order:
//   0. when `reset` is set, forget everything (the sender lost track of what the receiver holds,
//      after a step that may not have reached it; every sequence of the delta is fresh);
//   1. forget every sequence in `dropped` (freed since the last export: finished, aborted,
//      preempted; an id may come back in `seqs` as a new sequence of the same id);
//   2. per entry of `seqs`: a `fresh` sequence starts with num_rows empty rows; every row's
//      token count grows by grow_all; then each changed row j keeps its first keep[j] blocks,
//      appends tail_blocks[tail_indptr[j] .. tail_indptr[j+1]) and holds num_tokens[j] tokens.
// After it, every row holds exactly ceil(tokens / block_size) blocks.
//
// Plain data; thread-compatible.

#include <cstdint>
#include <vector>

#include "common/ids.h"

namespace hkv {

struct SequenceTableDelta {
  RequestId id = 0;
  bool fresh = false;         // The receiver holds no rows of this id (new, forked or re-admitted).
  int32_t grow_all = 0;       // Tokens added to every row since the last export.
  std::vector<int32_t> rows;  // Changed rows (l * num_kv_heads + h), ascending.
  std::vector<int32_t> keep;  // [rows] leading blocks the receiver keeps
  std::vector<int32_t> num_tokens;   // [rows] tokens of the row after the delta
  std::vector<int32_t> tail_indptr;  // [rows + 1] into tail_blocks
  std::vector<BlockId> tail_blocks;
};

struct PageTableDelta {
  int32_t num_rows_per_seq = 0;
  int32_t block_size = 0;
  bool reset = false;
  std::vector<RequestId> dropped;
  std::vector<SequenceTableDelta> seqs;

  // Entries of the block lists this delta carries (what a receiver copies).
  int64_t num_tail_blocks() const {
    int64_t n = 0;
    for (const SequenceTableDelta& s : seqs) n += static_cast<int64_t>(s.tail_blocks.size());
    return n;
  }
  int64_t num_changed_rows() const {
    int64_t n = 0;
    for (const SequenceTableDelta& s : seqs) n += static_cast<int64_t>(s.rows.size());
    return n;
  }
};

}  // namespace hkv
