#pragma once
// KvCacheManager: the head-block tables of every live sequence, on top of one BlockPool.
//
// Not thread-safe; owned by the engine thread (the scheduler calls it, nothing else does).
//
// Each sequence owns num_layers * num_kv_heads BlockTables, one per (layer, kv_head) "row",
// row index l * num_kv_heads + h. Rows grow independently: with HeadKV budgets one head may
// keep 20 tokens and its neighbour 2000, and the sequence's footprint is the exact sum of its
// rows' blocks. Growth is all-or-nothing: a call that cannot get every block it needs returns
// false (or nullopt) and leaves the pool and the tables unchanged.
//
//   seq 7, layer 0:  head 0  [b12][b40][b41]..   (num_tokens 35, block_size 16)
//                    head 1  [b3]                (num_tokens 9)
//   seq 7, layer 1:  head 0  [b7][b8]            ...
//
// Sharing (n > 1 samples of one prompt): Fork(src, dst) gives dst the same tables, each block's
// reference count +1, so the prompt's blocks are held (and counted in the pool) once. Appending
// to a row whose last block is partly filled and still shared first moves the row onto a fresh
// copy of it (copy-on-write): the copy (src -> dst block) is queued for the next step, which
// runs it before any KV is written (TakeBlockCopies -> Batch::block_copies). Full blocks are
// never written again, so they stay shared until freed; a block returns to the pool when its
// last holder frees it.

#include <cstdint>
#include <optional>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/types/span.h"
#include "block_manager/block_pool.h"
#include "common/batch.h"
#include "common/block_table.h"
#include "common/ids.h"
#include "common/page_table_delta.h"
#include "common/page_table_mirror.h"

namespace hkv {

struct KvCacheConfig {
  int32_t num_blocks = 0;
  int32_t block_size = 16;
  int32_t num_layers = 0;
  int32_t num_kv_heads = 0;
  // Tensor parallelism: the pool is split into `num_partitions` equal id ranges (one per rank's
  // device pool) and row (layer, kv_head) takes its blocks from partition
  // row_partition[layer * num_kv_heads + kv_head] (empty: all from partition 0). Adaptive
  // (reserved) layers need one partition.
  int32_t num_partitions = 1;
  std::vector<int32_t> row_partition;
};

// The CSR view of some rows, in the layout of common/batch.h (the type the receiving end,
// PageTableMirror, gives too).
using KvCsr = PageTableCsr;

class KvCacheManager {
 public:
  explicit KvCacheManager(const KvCacheConfig& config);

  const KvCacheConfig& config() const { return config_; }
  int32_t num_rows_per_seq() const { return config_.num_layers * config_.num_kv_heads; }

  // Blocks a sequence needs to hold tokens_per_row[r] tokens in row r (a fresh sequence).
  // REQUIRES: tokens_per_row.size() == num_rows_per_seq().
  int64_t FootprintBlocks(absl::Span<const int32_t> tokens_per_row) const;
  // Same, when every row holds `tokens`.
  int64_t FootprintBlocksUniform(int32_t tokens) const;
  // New blocks `seq` (live or not yet created) needs to grow row r by new_tokens_per_row[r].
  int64_t NewBlocksNeeded(RequestId seq, absl::Span<const int32_t> new_tokens_per_row) const;
  int64_t NewBlocksNeededUniform(RequestId seq, int32_t new_tokens) const;

  // Grows each row r of `seq` (created when absent) by new_tokens_per_row[r] tokens, each row's
  // new blocks taken from its partition (row_partition). Returns false, changing nothing, when
  // the pool (any partition) lacks blocks.
  bool Append(RequestId seq, absl::Span<const int32_t> new_tokens_per_row);
  // Grows every row by `new_tokens`.
  bool AppendUniform(RequestId seq, int32_t new_tokens);

  // Adaptive selection (see SequenceStep::layer_blocks): reserves blocks_per_layer[l] blocks
  // for layer l of a new sequence `seq`, whose rows stay empty until CommitAdaptive.
  // Returns the reservation as CSR over layers, or nullopt (nothing changed) when short.
  struct LayerReservation {
    std::vector<int32_t> indptr;  // [num_layers + 1]
    std::vector<BlockId> blocks;
  };
  std::optional<LayerReservation> ReserveLayers(RequestId seq,
                                                absl::Span<const int32_t> blocks_per_layer);
  // Splits the reservation: head h of layer l takes the next ceil(kept/block_size) blocks of
  // its layer, in head order, and holds kept_per_row[l*H+h] tokens; unused blocks are freed.
  // INVALID_ARGUMENT (nothing changed) if the counts do not fit the reservation.
  absl::Status CommitAdaptive(RequestId seq, absl::Span<const int32_t> kept_per_row);
  // Chunked compressed prefill: cuts each row r of `seq` to its first kept_per_row[r] tokens
  // (the worker compacted the kept tokens there) and frees the blocks past them, the prompt's
  // transient full K/V. INVALID_ARGUMENT (nothing changed) for an unknown sequence, a wrong
  // count, or a row asked to grow.
  absl::Status Shrink(RequestId seq, absl::Span<const int32_t> kept_per_row);

  // Makes `dst` share every block of `src` (see Sharing above). INVALID_ARGUMENT when `src`
  // is unknown or holds an uncommitted reservation, or `dst` exists.
  absl::Status Fork(RequestId src, RequestId dst);
  // Returns (and forgets) the block copies queued by Append since the last call, in order.
  std::vector<std::pair<BlockId, BlockId>> TakeBlockCopies();

  // Drops `seq`'s reference on each of its blocks (and frees its uncommitted reservation);
  // a block no other sequence holds returns to the pool. No-op for an unknown id.
  void Free(RequestId seq);

  bool Contains(RequestId seq) const;
  // Tokens held by each row of `seq` [num_rows_per_seq()]. REQUIRES: Contains(seq).
  std::vector<int32_t> RowLengths(RequestId seq) const;
  const BlockTable& Table(RequestId seq, int32_t layer, int32_t kv_head) const;
  int64_t SequenceBlocks(RequestId seq) const;  // Blocks held by `seq` (its footprint).

  // CSR rows (seq, layer, kv_head) for `seqs` in order, as common/batch.h lays them out.
  KvCsr ExportCsr(absl::Span<const RequestId> seqs) const;

  // The changes of `seqs`' rows since each one's last ExportDelta (all its rows for a sequence
  // not exported yet), and the exported sequences freed since the last call; see
  // common/page_table_delta.h. A receiver that applies every delta in order holds, for each
  // sequence of the last delta, exactly ExportCsr's rows. Costs O(changed rows + sequences),
  // not O(blocks). The tracking is one stream: a single receiver (the engine's workers).
  PageTableDelta ExportDelta(absl::Span<const RequestId> seqs);
  // Starts the delta stream again: the next ExportDelta is a `reset` one and every sequence in
  // it is fresh. For a sender that cannot tell whether its last delta reached the receiver.
  void ResetDeltaTracking();
  // Tokens of every row of `seqs` in order (ExportCsr's num_tokens, without the blocks): what a
  // delta step carries as Batch::kv_len_after. O(rows).
  std::vector<int32_t> ExportRowTokens(absl::Span<const RequestId> seqs) const;

  int32_t num_free_blocks() const { return pool_.num_free(); }
  int32_t num_total_blocks() const { return pool_.num_total(); }
  // Blocks held by each layer, over all sequences [num_layers].
  std::vector<int64_t> BlocksPerLayer() const;
  const BlockPool& pool() const { return pool_; }

 private:
  struct SequenceKv {
    std::vector<BlockTable> rows;  // [num_layers * num_kv_heads]
    std::optional<LayerReservation> reservation;
    // Whether a block of this sequence may also be held by another one: set on both ends of a
    // Fork (the only way blocks become shared), never cleared. While false no row needs a
    // copy-on-write, so the per-row reference-count lookups (a cache miss each into a pool of
    // millions of blocks, 256 rows a sequence) are skipped.
    bool may_share = false;
    // ExportDelta's tracking: whether the receiver holds this sequence; tokens every row grew
    // by since its last export; rows changed otherwise, each with the leading blocks the
    // receiver still holds right (dirty_keep[r] = -1: row r unchanged). Unused (and empty)
    // until the sequence's first ExportDelta.
    bool exported = false;
    int32_t grow_all = 0;
    std::vector<int32_t> dirty_keep;
    std::vector<int32_t> dirty_rows;
  };

  // Whether growing `t` (a row of `kv`) by `new_tokens` writes into a last block another table
  // also holds.
  bool NeedsCopy(const SequenceKv& kv, const BlockTable& t, int32_t new_tokens) const;
  // Records that row r of `kv` changed past its first `keep` blocks (or in length only).
  static void MarkRowChanged(SequenceKv& kv, int32_t r, int32_t keep);
  // Records that `seq` is gone, for the receiver, if it was ever exported.
  void MarkDropped(const SequenceKv& kv, RequestId seq);

  KvCacheConfig config_;
  BlockPool pool_;
  std::vector<std::pair<BlockId, BlockId>> pending_copies_;  // src -> dst, for the next step
  std::vector<RequestId> dropped_;  // exported sequences freed since the last ExportDelta
  bool delta_reset_ = false;        // the next ExportDelta starts the stream again
  absl::flat_hash_map<RequestId, SequenceKv> seqs_;
};

}  // namespace hkv
