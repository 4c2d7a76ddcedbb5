#pragma once
// PagedKvView: one layer's per-head paged K/V cache as the kernels see it.
// Host-only header (plain pointers); no CUDA needed to include it.
//
//   CSR row of (seq, kv_head) = seq * row_seq_stride + row_offset + kv_head
//     default (row_seq_stride 0 -> num_kv_heads, row_offset 0): a per-layer CSR;
//     common/batch.h's (seq, layer, kv_head) rows: row_seq_stride = num_layers * num_kv_heads,
//     row_offset = layer * num_kv_heads. (Decode plans take explicit row ids instead.)
//   indptr[r] .. indptr[r+1]  -> indices[]: the row's blocks, in token order
//   last_len[r]               -> valid tokens in the row's last block (1..block_size);
//                                 a row with no blocks has length 0.
//   row length = (indptr[r+1] - indptr[r] - 1) * block_size + last_len[r]
//
//   k_pool / v_pool: block b starts at pool + b * block_stride elements and holds
//   [block_size, head_dim] contiguous tokens of ONE kv head (block_stride >= block_size*head_dim).
//
// Thread-safe: plain data; the pointed-to memory is owned by the caller.

#include <cstdint>

namespace hkv::kernels {

struct PagedKvView {
  const int32_t* indptr = nullptr;    // device [num_rows + 1]
  const int32_t* indices = nullptr;   // device [indptr[num_rows]]
  const int32_t* last_len = nullptr;  // device [num_rows]
  const void* k_pool = nullptr;       // device [num_blocks, block_size, head_dim]
  const void* v_pool = nullptr;       // device [num_blocks, block_size, head_dim]
  int64_t block_stride = 0;           // elements between consecutive blocks
  int32_t block_size = 0;             // tokens per block; a power of two
  int32_t num_kv_heads = 0;
  int32_t head_dim = 0;
  int32_t row_seq_stride = 0;  // CSR rows per sequence; 0 means num_kv_heads
  int32_t row_offset = 0;      // CSR row of (seq 0, kv_head 0)

  // Returns the CSR row of (seq, kv_head).
  int64_t Row(int64_t seq, int32_t kv_head) const {
    return seq * (row_seq_stride > 0 ? row_seq_stride : num_kv_heads) + row_offset + kv_head;
  }
};

// Returns the token count of CSR row `r` from host copies of indptr and last_len.
inline int64_t PagedRowLength(const int32_t* indptr, const int32_t* last_len, int64_t r,
                              int32_t block_size) {
  const int32_t blocks = indptr[r + 1] - indptr[r];
  return blocks <= 0 ? 0 : static_cast<int64_t>(blocks - 1) * block_size + last_len[r];
}

}  // namespace hkv::kernels
