#pragma once
// Causal prefill attention with GQA over one layer: the queries of a prefill chunk attend to
// the chunk's own K/V (a dense scratch) and, for chunked prefill, to the K/V that earlier
// chunks left in the sequence's paged rows. Tensor cores (wgmma + TMA on sm_90a,
// prefill_attention_sm90.cu; mma.sync m16n8k16 elsewhere), fp32 softmax. Host-only declarations;
// kernels in prefill_attention.cu.
//
//   sequence s: queries q[cu_seqlens[s] .. cu_seqlens[s+1]) (chunk-local index i)
//   keys seen by query i of head h (kv head h / group):
//     paged row (s, kv_head): positions 0 .. P-1   (P = that row's length; 0 without `prefix`)
//     dense chunk K/V:        positions P .. P+i   (causal)
//
// Thread-safety: stateless; ordered by the stream.

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/dtype.h"
#include "kernels/paged_kv.h"

namespace hkv::kernels {

// Which kernel RunPrefillAttention runs. kAuto: the wgmma kernel (sm_90a,
// prefill_attention_sm90.cu; 1.8-2.1x the mma.sync kernel on the H200) where
// PrefillAttentionSm90Supported's checks pass (an sm_90 GPU, total_q set, 16-byte aligned
// pointers and strides), else the mma.sync kernel. kWgmma fails with cudaErrorNotSupported where
// it cannot run; kMmaSync is the reference (and the only kernel before sm_90).
// kWgmmaSerial: the wgmma kernel without its MMA/softmax overlap and with every paged-prefix
// tile gathered by cp.async (no page TMA): the simpler path, for diagnosis and the bench.
enum class PrefillKernel : int8_t { kAuto, kMmaSync, kWgmma, kWgmmaSerial };

struct PrefillAttentionArgs {
  DType dtype = DType::kBf16;
  const void* q = nullptr;  // device [total_q, num_q_heads, head_dim], token stride q_stride
  const void* k = nullptr;  // device [total_q, num_kv_heads, head_dim], token stride kv_stride
  const void* v = nullptr;  // device [total_q, num_kv_heads, head_dim], token stride kv_stride
  void* out = nullptr;      // device [total_q, num_q_heads, head_dim], token stride out_stride
  int64_t q_stride = 0;
  int64_t kv_stride = 0;
  int64_t out_stride = 0;
  const int32_t* cu_seqlens = nullptr;  // device [num_seqs + 1], chunk token offsets
  int32_t num_seqs = 0;
  int32_t max_q_len = 0;  // max over sequences of the chunk length (sets the grid)
  int32_t num_q_heads = 0;
  int32_t num_kv_heads = 0;
  int32_t head_dim = 0;  // 64 or 128
  float scale = 0.0f;
  // Optional earlier-chunk K/V: CSR rows prefix->Row(seq, kv_head), same num_kv_heads/head_dim.
  const PagedKvView* prefix = nullptr;
  // Rows addressable from q / k / v (>= cu_seqlens[num_seqs]): the wgmma kernel's TMA bounds.
  // 0 (unknown) keeps kAuto on the mma.sync kernel.
  int32_t total_q = 0;
  PrefillKernel kernel = PrefillKernel::kAuto;
  // Only the 128-query tile holding each sequence's last row is computed; the other rows of
  // `out` are left as they were. For a model's last layer, where only the rows that sample a
  // token go on (the chunk's K/V are already written): 1/256 of a 32k chunk's work.
  bool last_tile_only = false;
};

// Runs causal prefill attention. Returns cudaErrorInvalidValue for unsupported shapes.
// REQUIRES: the prefix page table is well formed (last_len in 1..block_size on non-empty rows).
// Grid: (ceil(max_q_len / 128) or, last_tile_only, 1, num_q_heads, num_seqs); block 128
// (mma.sync) or 384 (wgmma).
cudaError_t RunPrefillAttention(const PrefillAttentionArgs& args, cudaStream_t stream);

}  // namespace hkv::kernels
