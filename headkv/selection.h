#pragma once
// SnapKV-style token selection for compressed prefill: the CPU reference of window attention
// scores, per-head top-k selection and Ada-KV's per-layer budget split. The CUDA kernels in
// kernels/kv_select are tested against these functions.
//
// Thread-safe: pure functions of their arguments.
//
//   positions:  0 ............................ n-w-1 | n-w ....... n-1
//               scored, max-pooled, top-cap kept      | window: always kept
//   window query i (position n-w+i) attends to keys 0..n-w+i (causal inside the window).

#include <cstdint>
#include <vector>

#include "absl/types/span.h"

namespace hkv {

// Computes window attention scores for one layer in fp32. For each score head: softmax of
// q k^T / sqrt(head_dim) over all keys with the causal mask inside the window, averaged over
// the w window queries (and over the query heads of each GQA group when `group_average`),
// then max-pooled with kernel `pool_kernel` (padding k/2, stride 1, clipped at the edges) over
// the first n - w positions. q-head h belongs to kv-head h / (num_q_heads / num_kv_heads).
// Returns [num_score_heads][n - w], num_score_heads = group_average ? num_kv_heads : num_q_heads.
// REQUIRES: n >= w >= 1, num_q_heads % num_kv_heads == 0, head_dim >= 1, pool_kernel >= 1.
//   q_window: [w, num_q_heads, head_dim] (the last w prompt queries, RoPE applied)
//   keys:     [n, num_kv_heads, head_dim] (RoPE applied)
std::vector<std::vector<float>> WindowScores(const float* q_window, const float* keys, int32_t n,
                                             int32_t w, int32_t num_q_heads, int32_t num_kv_heads,
                                             int32_t head_dim, int32_t pool_kernel,
                                             bool group_average);

// Returns the positions a head keeps, ascending: the top-`cap` of `scores` (ties broken by the
// lower position; cap clipped to [0, scores.size()]; NaN ranks lowest) plus the window
// positions n-w..n-1.
// REQUIRES: scores.size() == n - w, w >= 0.
std::vector<int32_t> SelectKept(absl::Span<const float> scores, int32_t cap, int32_t n,
                                int32_t w);

// Splits `layer_budget` tokens (window excluded) across the heads of one layer, Ada-KV style.
// Each head first gets floor(alpha * layer_budget / H) (clipped to its n - w scores); the rest
// goes to the highest remaining scores of the flattened [H][n - w] array (ties: lower head,
// then lower position), where a head's "remaining" scores are those below its own top-floor.
// Returns caps per head: each <= n - w, sum == min(layer_budget, H * (n - w)).
// REQUIRES: every head_scores[h] has the same size (n - w); 0 <= alpha <= 1.
// The two numbers AdaKvAllocate splits by (the CUDA kernel gets them from here): each head's
// floor, min(n - w, floor(alpha * layer_budget / H)), and the tokens the heads share,
// min(layer_budget, H * (n - w)). REQUIRES: num_heads >= 1, past >= 0, 0 <= alpha <= 1.
struct AdaKvShares {
  int32_t floor_cap = 0;
  int64_t total = 0;
};
AdaKvShares AdaKvSplit(int32_t layer_budget, int32_t num_heads, int32_t past, float alpha);

std::vector<int32_t> AdaKvAllocate(const std::vector<std::vector<float>>& head_scores,
                                   int32_t layer_budget, float alpha);

}  // namespace hkv
