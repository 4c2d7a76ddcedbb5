#pragma once
// Attention probes for HeadKV scoring (`hkv headkv-score`): for chosen decode sequences of a
// step, the top-N positions of each query head's softmax attention row over a prefix of its
// paged KV row (the prompt), and their weights. Host-only declarations; the kernels live in
// attention_probe.cu.
//
// One layer at a time: the logits of every probed (sequence, query head) row of this layer
// are materialised in fp32 in a caller's workspace (never the whole model's rows), then one
// CTA per row takes the softmax max and sum over the whole row and picks the top-N prompt
// positions by repeated block argmax (ties to the lower position).
//
//   out (positions, weights): [num_probes, num_q_heads, max_top_n]; row (p, h) fills its first
//   top_n[p] entries, by falling weight.
//
// Thread-safety: plain data; calls on one stream are ordered by the stream. Not CUDA-graph
// captured (probe steps run eagerly).

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "kernels/dtype.h"
#include "kernels/paged_kv.h"

namespace hkv::kernels {

inline constexpr int32_t kMaxProbeTopN = 256;  // Matches common/batch.h's limit.

struct AttentionProbeArgs {
  DType dtype = DType::kBf16;
  // device [*, num_q_heads, head_dim]: probe p's query is row q_row[p], q_row_stride elements
  // apart (the step's qkv buffer).
  const void* q = nullptr;
  int64_t q_row_stride = 0;
  PagedKvView kv;  // This layer; probe p reads rows kv.Row(kv_seq, kv_head).
  // device [num_probes, 4]: per probe (q_row, kv_seq, prompt_len, top_n): positions
  // [0, prompt_len) are ranked (prompt_len <= the row's length), 1 <= top_n <=
  // min(max_top_n, prompt_len).
  const int32_t* meta = nullptr;
  int32_t num_probes = 0;
  int32_t num_q_heads = 0;  // kv.num_kv_heads * group (group <= 8)
  int32_t max_len = 0;      // >= every probed row's length
  int32_t max_top_n = 0;    // 1..kMaxProbeTopN: the output stride
  float scale = 0.0f;
  float* logits = nullptr;       // device workspace [num_probes, num_q_heads, max_len] fp32
  int32_t* positions = nullptr;  // device [num_probes, num_q_heads, max_top_n]
  float* weights = nullptr;      // device [num_probes, num_q_heads, max_top_n]
};

// Bytes of AttentionProbeArgs::logits for these sizes.
size_t AttentionProbeWorkspaceBytes(int32_t num_probes, int32_t num_q_heads, int32_t max_len);

// Runs the probe of one layer. cudaErrorInvalidValue for bad shapes (head_dim not 64/128,
// max_top_n outside 1..kMaxProbeTopN, num_q_heads not a multiple of num_kv_heads, null buffers).
// Grid: logits (ceil(max_len / 8), probes * q heads) Block: (256, one warp a position);
//       top-N (probes * q heads) Block: (256).
cudaError_t RunAttentionProbe(const AttentionProbeArgs& args, cudaStream_t stream);

}  // namespace hkv::kernels
