#pragma once
// Writes new K/V tokens into the per-head paged pool. Host-only declarations; kernels in
// kv_append.cu.
//
// Thread-safety: stateless; ordered by the stream.

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/dtype.h"
#include "kernels/paged_kv.h"

namespace hkv::kernels {

// Decode append: token s of the batch goes, for each kv head h, into the LAST block of CSR row
// kv.Row(s, h) at slot last_len[row] - 1 (the page table already counts the new token).
//   k_new, v_new: device [num_seqs, num_kv_heads, head_dim], seq stride `stride` elements.
// Rows with no blocks are skipped. `kv` pools are written through its (const) pointers.
// Grid: (num_seqs * num_kv_heads) Block: (head_dim / 8).
cudaError_t AppendDecodeKv(DType dtype, const PagedKvView& kv, const void* k_new, const void* v_new,
                           int64_t stride, int32_t num_seqs, cudaStream_t stream);

// Slot-mapping write: token t of head h goes to pool slot slots[t * num_kv_heads + h]
// (= block * block_size + offset; negative = skip).
//   k_new, v_new: device [tokens, num_kv_heads, head_dim], token stride `stride` elements.
//   slots: device [tokens, num_kv_heads].
// Grid: (tokens * num_kv_heads) Block: (head_dim / 8).
cudaError_t AppendKvSlots(DType dtype, const PagedKvView& kv, const void* k_new, const void* v_new,
                          int64_t stride, const int64_t* slots, int32_t tokens,
                          cudaStream_t stream);

}  // namespace hkv::kernels
