#pragma once
// BlockPool: the free list and reference counts of the KV pool's head-blocks. A head-block
// holds block_size tokens of K and V for one KV head of one layer; the pool only counts them.
//
// Not thread-safe; owned by KvCacheManager on the engine thread.
//
//   ref_count:  [2][0][1][0][1] ...   0 = free (on the free list), n = held by n tables (the
//               samples of an n > 1 request share their prompt's blocks) or one reservation
//   free list:  LIFO stack of free ids, so recently freed (cache-warm) blocks are reused first

#include <cstdint>
#include <optional>
#include <vector>

#include "common/ids.h"

namespace hkv {

class BlockPool {
 public:
  // Creates a pool of blocks 0..num_blocks-1, all free, in `num_partitions` equal ranges:
  // partition p holds ids [p * B, (p + 1) * B), B = num_blocks / num_partitions (tensor-parallel
  // rank p's device pool; one partition otherwise). REQUIRES: num_blocks >= 0,
  // num_partitions >= 1 dividing num_blocks.
  explicit BlockPool(int32_t num_blocks, int32_t num_partitions = 1);

  // Takes n free blocks of `partition`, each then held; nullopt (pool unchanged) when
  // fewer than n are free there. REQUIRES: n >= 0.
  std::optional<std::vector<BlockId>> Allocate(int32_t n, int32_t partition = 0);
  // Adds a reference to a held block. REQUIRES: held(id).
  void IncRef(BlockId id);
  // Drops a reference; the block returns to the free list at 0. REQUIRES: held(id).
  void Release(BlockId id);
  // Returns whether block `id` is held (not free).
  bool held(BlockId id) const { return ref_count(id) > 0; }
  // Returns the tables (or reservations) holding block `id`.
  int32_t ref_count(BlockId id) const;

  int32_t num_free() const { return num_free_; }
  int32_t num_free(int32_t partition) const {
    return static_cast<int32_t>(free_[partition].size());
  }
  int32_t num_partitions() const { return static_cast<int32_t>(free_.size()); }
  int32_t partition_of(BlockId id) const { return id / partition_size_; }
  int32_t num_total() const { return static_cast<int32_t>(ref_counts_.size()); }
  int32_t num_used() const { return num_total() - num_free(); }

 private:
  std::vector<int32_t> ref_counts_;         // [num_blocks]
  std::vector<std::vector<BlockId>> free_;  // Per partition: free ids; the back goes next.
  int32_t partition_size_ = 1;
  int32_t num_free_ = 0;
};

}  // namespace hkv
