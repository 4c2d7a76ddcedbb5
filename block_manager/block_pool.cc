#include "block_manager/block_pool.h"

#include <algorithm>

#include "common/logging.h"

namespace hkv {

BlockPool::BlockPool(int32_t num_blocks, int32_t num_partitions) {
  HKV_CHECK(num_blocks >= 0) << "num_blocks=" << num_blocks;
  HKV_CHECK(num_partitions >= 1 && num_blocks % num_partitions == 0)
      << num_partitions << " partitions of " << num_blocks << " blocks";
  ref_counts_.assign(static_cast<size_t>(std::max(num_blocks, 0)), 0);
  partition_size_ = std::max(1, num_blocks / num_partitions);
  free_.resize(num_partitions);
  for (int32_t p = 0; p < num_partitions; ++p) {
    const BlockId first = p * (num_blocks / num_partitions);
    const BlockId last = first + num_blocks / num_partitions - 1;
    free_[p].reserve(num_blocks / num_partitions);
    // Highest id at the bottom, so the first allocations get first, first + 1, ...
    for (BlockId id = last; id >= first; --id) free_[p].push_back(id);
  }
  num_free_ = num_blocks;
}

std::optional<std::vector<BlockId>> BlockPool::Allocate(int32_t n, int32_t partition) {
  HKV_CHECK(n >= 0) << "n=" << n;
  HKV_CHECK(partition >= 0 && partition < num_partitions()) << "partition " << partition;
  std::vector<BlockId>& free = free_[partition];
  if (n > static_cast<int32_t>(free.size())) return std::nullopt;
  std::vector<BlockId> out(free.end() - n, free.end());
  std::reverse(out.begin(), out.end());
  free.resize(free.size() - n);
  num_free_ -= n;
  for (BlockId id : out) ref_counts_[id] = 1;
  return out;
}

void BlockPool::IncRef(BlockId id) {
  HKV_CHECK(id >= 0 && id < num_total() && ref_counts_[id] >= 1) << "IncRef of free block " << id;
  ++ref_counts_[id];
}

void BlockPool::Release(BlockId id) {
  HKV_CHECK(id >= 0 && id < num_total() && ref_counts_[id] >= 1) << "Release of free block " << id;
  if (--ref_counts_[id] > 0) return;
  free_[partition_of(id)].push_back(id);
  ++num_free_;
}

int32_t BlockPool::ref_count(BlockId id) const {
  HKV_CHECK(id >= 0 && id < num_total()) << "block " << id << " out of range";
  return ref_counts_[id];
}

}  // namespace hkv
