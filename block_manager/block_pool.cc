#include "block_manager/block_pool.h"

#include <algorithm>

#include "common/logging.h"

namespace hkv {

BlockPool::BlockPool(int32_t num_blocks) {
  HKV_CHECK(num_blocks >= 0) << "num_blocks=" << num_blocks;
  ref_counts_.assign(static_cast<size_t>(std::max(num_blocks, 0)), 0);
  free_.reserve(num_blocks);
  // Highest id at the bottom, so the first allocations get 0, 1, 2, ...
  for (BlockId id = num_blocks - 1; id >= 0; --id) free_.push_back(id);
}

std::optional<std::vector<BlockId>> BlockPool::Allocate(int32_t n) {
  HKV_CHECK(n >= 0) << "n=" << n;
  if (n > num_free()) return std::nullopt;
  std::vector<BlockId> out(free_.end() - n, free_.end());
  std::reverse(out.begin(), out.end());
  free_.resize(free_.size() - n);
  for (BlockId id : out) ref_counts_[id] = 1;
  return out;
}

void BlockPool::IncRef(BlockId id) {
  HKV_CHECK(id >= 0 && id < num_total() && ref_counts_[id] >= 1) << "IncRef of free block " << id;
  ++ref_counts_[id];
}

void BlockPool::Release(BlockId id) {
  HKV_CHECK(id >= 0 && id < num_total() && ref_counts_[id] >= 1)
      << "Release of free block " << id;
  if (--ref_counts_[id] == 0) free_.push_back(id);
}

int32_t BlockPool::ref_count(BlockId id) const {
  HKV_CHECK(id >= 0 && id < num_total()) << "block " << id << " out of range";
  return ref_counts_[id];
}

}  // namespace hkv
