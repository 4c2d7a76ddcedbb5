#pragma once
// Fused SnapKV-style selection for compressed prefill (the GPU twin of headkv/selection.h):
// per KV head, the softmax window scores of the last `window` queries over all prompt keys
// (causal inside the window), averaged over the window and the GQA group, max-pooled, then the
// head's own top-cap positions (ties -> lower position) plus the window are scattered, in
// position order, from the dense prefill K/V into the head's paged blocks.
// The [heads, window, n] attention matrix is never stored: two passes over K compute the
// softmax normalisers, then the scores.
//
//   positions: 0 ......................... n-w-1 | n-w ..... n-1
//              scored, pooled, top-cap kept       | window: always kept
//   kept token i of head h -> block dest_indices[dest_indptr[dest_first_row + h] + i / bs],
//                             slot i % bs
//
// Adaptive (AdaKV) selection instead splits one budget across the layer's heads on the device
// (headkv's AdaKvAllocate): each head keeps at least a floor, the rest of the budget goes to
// the highest pooled scores of the flattened [heads, n - w] array below each head's own
// top-floor (ties -> lower head, then lower position); the heads' blocks are packed in head
// order into one reserved list:
//   kept token i of head h -> block dest_indices[sum_{g<h} ceil(kept_g / bs) + i / bs]
// In-place mode (`in_place`, chunked prefill's last chunk): the keys and values are read from
// the destination rows themselves (position j of head h in slot j of row dest_first_row + h,
// the whole prompt already appended), and the kept tokens are compacted within those rows:
// kept token i moves from slot kept_index[i] to slot i (kept_index ascending, so a slot is
// read before anything is written over it). `keys`, `values` and `kv_stride` are unused.
//
// Thread-safety: stateless; ordered by the stream.

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "kernels/dtype.h"

namespace hkv::kernels {

inline constexpr int32_t kMaxAdaptiveHeads = 128;

struct KvSelectArgs {
  DType dtype = DType::kBf16;
  const void* q_window = nullptr;  // device [window, num_q_heads, head_dim], token stride q_stride
  const void* keys = nullptr;      // device [n, num_kv_heads, head_dim], token stride kv_stride
  const void* values = nullptr;    // device [n, num_kv_heads, head_dim], token stride kv_stride
  int64_t q_stride = 0;
  int64_t kv_stride = 0;
  int32_t n = 0;            // prompt length
  int32_t window = 8;       // w; clipped to n
  int32_t pool_kernel = 7;  // odd kernel, padding kernel/2, stride 1, clipped at the edges
  int32_t num_q_heads = 0;
  int32_t num_kv_heads = 0;
  int32_t head_dim = 0;           // 64 or 128
  float scale = 0.0f;             // softmax scale (1/sqrt(head_dim))
  const int32_t* caps = nullptr;  // device [num_kv_heads]: tokens kept besides the window
  // Destination paged rows: row dest_first_row + h holds head h's kept tokens.
  const int32_t* dest_indptr = nullptr;
  const int32_t* dest_indices = nullptr;
  int32_t dest_first_row = 0;
  void* k_pool = nullptr;  // device [num_blocks, block_size, head_dim]
  void* v_pool = nullptr;
  int64_t block_stride = 0;       // elements between blocks
  int32_t block_size = 0;         // power of two
  void* workspace = nullptr;      // device, KvSelectWorkspaceBytes() bytes
  int32_t* kept_count = nullptr;  // device [num_kv_heads] out: min(cap, n-w) + w
  int32_t* kept_index = nullptr;  // device [num_kv_heads, n] out: kept positions, ascending
  float* scores = nullptr;        // optional device [num_kv_heads, n - w] out: pooled scores
  // Adaptive selection when adaptive_total >= 0: `caps` is ignored, and so are `dest_indptr`
  // and `dest_first_row` unless `in_place` (then each head is compacted within its own row and
  // the reservation fields are unused). adaptive_total: tokens (windows excluded) the heads share, at most
  // num_kv_heads * (n - w); adaptive_floor: each head's floor, at most n - w, with
  // adaptive_floor * num_kv_heads <= adaptive_total. Blocks at or past dest_capacity in
  // dest_indices are never written (a reservation too small shows in the kept counts).
  int64_t adaptive_total = -1;
  int32_t adaptive_floor = 0;
  int32_t dest_capacity = 0;
  int32_t* caps_out = nullptr;  // device [num_kv_heads] out (adaptive): caps besides the window
  bool in_place = false;          // keys/values from the destination rows, compacted in place
};

// Returns the workspace bytes for a prompt of `n` tokens.
size_t KvSelectWorkspaceBytes(int32_t n, int32_t window, int32_t num_q_heads, int32_t num_kv_heads);

// Runs scoring, (adaptive split,) selection and scatter. Returns cudaErrorInvalidValue for
// unsupported shapes (window * group > 64, head_dim not 64/128, block_size not a power of two,
// q_window / keys not 16-byte aligned or their token strides not a multiple of 8 elements,
// adaptive with more than kMaxAdaptiveHeads heads or an inconsistent total / floor).
cudaError_t RunKvSelect(const KvSelectArgs& args, cudaStream_t stream);

}  // namespace hkv::kernels
