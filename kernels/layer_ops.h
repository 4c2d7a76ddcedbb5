#pragma once
// Element-wise and row-wise layer kernels: RMSNorm (optionally fused with the residual add),
// rotary embedding (both pairings), SwiGLU, embedding lookup. fp32 arithmetic, T storage.
// Host-only declarations; kernels in layer_ops.cu.
//
// Thread-safety: stateless; ordered by the stream.

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/dtype.h"

namespace hkv::kernels {

// out = x / rms(x) * weight per row. With `residual` != nullptr, first residual += x (stored in
// T) and the sum is normalised instead: the vLLM fused_add_rms_norm contract.
//   x, out: device [rows, dim] (row stride dim); residual: device [rows, dim] or null;
//   weight: device [dim]. out may alias x. dim % 8 == 0.
// Grid: (rows) Block: (min(1024, dim/8) rounded to 32).
cudaError_t RmsNorm(DType dtype, const void* x, void* residual, const void* weight, void* out,
                    int32_t rows, int32_t dim, float eps, cudaStream_t stream);

enum class RopeStyle {
  kRotateHalf,   // Hugging Face: pairs (i, i + d/2)
  kInterleaved,  // llama2.c / GPT-J: pairs (2i, 2i + 1)
};

// Rotates q and k in place at positions `pos`. Frequency i (i < head_dim/2) is inv_freq[i]
// when `inv_freq` != nullptr (e.g. Llama-3 rope scaling), else theta^(-2i/head_dim).
//   q: device [tokens, num_q_heads, head_dim], token stride q_stride
//   k: device [tokens, num_kv_heads, head_dim], token stride k_stride (k may be null)
//   pos: device [tokens]; inv_freq: device [head_dim / 2] or null.
// Grid: (tokens, heads in blocks of about 128 rotations) Block: (128); head_dim % 16 != 0 or
// unaligned rows: (tokens) Block: (128), scalar accesses.
cudaError_t Rope(DType dtype, void* q, int64_t q_stride, int32_t num_q_heads, void* k,
                 int64_t k_stride, int32_t num_kv_heads, const int32_t* pos, int32_t tokens,
                 int32_t head_dim, float theta, const float* inv_freq, RopeStyle style,
                 cudaStream_t stream);

// out[t, i] = silu(gate[t, i]) * up[t, i].
//   gate, up: device [tokens, dim] with token stride in_stride; out: device [tokens, dim].
cudaError_t SwiGlu(DType dtype, const void* gate, const void* up, int64_t in_stride, void* out,
                   int32_t tokens, int32_t dim, cudaStream_t stream);

// out[t] = table[ids[t]]; ids outside [0, vocab) give a zero row.
//   table: device [vocab, dim]; ids: device [tokens]; out: device [tokens, dim]. dim % 8 == 0.
cudaError_t EmbeddingLookup(DType dtype, const void* table, int32_t vocab, int32_t dim,
                            const int32_t* ids, int32_t tokens, void* out, cudaStream_t stream);

}  // namespace hkv::kernels
