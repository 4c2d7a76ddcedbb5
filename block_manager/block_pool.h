#pragma once
// BlockPool: the free list and reference counts of the KV pool's head-blocks. A head-block
// holds block_size tokens of K and V for one KV head of one layer; the pool only counts them.
//
// Not thread-safe; owned by KvCacheManager on the engine thread.
//
//   ref_count:  [2][0][1][0][1] ...   0 = free (on the free list), n = held by n tables
//   free list:  LIFO stack of free ids, so recently freed (cache-warm) blocks are reused first

#include <cstdint>
#include <optional>
#include <vector>

#include "common/ids.h"

namespace hkv {

class BlockPool {
 public:
  // Creates a pool of blocks 0..num_blocks-1, all free. REQUIRES: num_blocks >= 0.
  explicit BlockPool(int32_t num_blocks);

  // Takes n free blocks, each with ref count 1; nullopt (pool unchanged) when fewer than n are
  // free. REQUIRES: n >= 0.
  std::optional<std::vector<BlockId>> Allocate(int32_t n);
  // Adds a reference to a held block. REQUIRES: ref_count(id) >= 1.
  void IncRef(BlockId id);
  // Drops a reference; the block returns to the free list at 0. REQUIRES: ref_count(id) >= 1.
  void Release(BlockId id);

  int32_t ref_count(BlockId id) const;
  int32_t num_free() const { return static_cast<int32_t>(free_.size()); }
  int32_t num_total() const { return static_cast<int32_t>(ref_counts_.size()); }
  int32_t num_used() const { return num_total() - num_free(); }

 private:
  std::vector<int32_t> ref_counts_;  // [num_blocks]
  std::vector<BlockId> free_;        // Free ids; the back is allocated next.
};

}  // namespace hkv
