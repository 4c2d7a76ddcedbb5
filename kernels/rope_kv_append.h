#pragma once
// RoPE and the paged K/V write of a step's tokens in one kernel: Rope (layer_ops.h) of q and k
// in place, then AppendKvSlots (kv_append.h) of the rotated k and of v, with the same results
// bit for bit, one launch and one pass over q/k/v instead of two. Host-only declarations;
// kernel in rope_kv_append.cu.
//
// Thread-safety: stateless; ordered by the stream.

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/dtype.h"
#include "kernels/layer_ops.h"
#include "kernels/paged_kv.h"

namespace hkv::kernels {

struct RopeKvAppendArgs {
  DType dtype = DType::kBf16;
  // The step's fused projection output: token t's q heads at qkv + t * stride, its k heads at
  // + k_offset, its v heads at + v_offset (elements). device [tokens, stride].
  void* qkv = nullptr;
  int64_t stride = 0, k_offset = 0, v_offset = 0;
  int32_t num_q_heads = 0;
  const int32_t* pos = nullptr;  // device [tokens]
  int32_t tokens = 0;            // tokens rotated
  float theta = 10000.0f;
  const float* inv_freq = nullptr;  // device [head_dim / 2] or null (see Rope)
  RopeStyle style = RopeStyle::kRotateHalf;
  // The first append_tokens tokens are written: head h of token t to pool slot
  // slots[t * num_kv_heads + h] (negative: skipped). device [append_tokens, num_kv_heads].
  const int64_t* slots = nullptr;
  int32_t append_tokens = 0;
};

// REQUIRES head_dim % 8 == 0, strides and offsets multiples of 8, 0 <= append_tokens <= tokens.
// The pools, block size, head count and head_dim come from `kv`.
// Grid: (tokens, heads in blocks of about 128 rotations) Block: (128); head_dim % 16 != 0 or
// unaligned rows: (tokens) Block: (128), scalar accesses.
cudaError_t RopeKvAppend(const RopeKvAppendArgs& args, const PagedKvView& kv, cudaStream_t stream);

}  // namespace hkv::kernels
