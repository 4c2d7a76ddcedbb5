#pragma once
// BlockTable: the head-blocks of one (sequence, layer, kv_head) row, in token order.
//
// Not thread-safe; plain data owned by KvCacheManager.
//
//   blocks:     [b12][b40][b41]      block_size 16
//   num_tokens: 35  -> b41 holds 3 tokens (last_len 3); ceil(35/16) == blocks.size()

#include <cstdint>
#include <vector>

#include "common/ids.h"

namespace hkv {

struct BlockTable {
  std::vector<BlockId> blocks;
  int32_t num_tokens = 0;

  // Returns the blocks needed to hold `tokens` tokens.
  static int32_t BlocksFor(int32_t tokens, int32_t block_size) {
    return (tokens + block_size - 1) / block_size;
  }
  // Returns the new blocks needed to grow by `new_tokens`.
  int32_t NewBlocksFor(int32_t new_tokens, int32_t block_size) const {
    return BlocksFor(num_tokens + new_tokens, block_size) - static_cast<int32_t>(blocks.size());
  }
  // Returns the tokens held by the last block (0 when empty).
  int32_t last_len(int32_t block_size) const {
    return num_tokens == 0 ? 0
                           : num_tokens - (static_cast<int32_t>(blocks.size()) - 1) * block_size;
  }
};

}  // namespace hkv
