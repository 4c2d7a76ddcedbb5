#pragma once
// Test helper: builds Batches by hand for worker tests, giving each sequence its own fixed
// blocks (no block manager: workers must not depend on it). Not thread-safe; tests only.

#include <algorithm>
#include <cmath>
#include <functional>
#include <vector>

#include "common/batch.h"
#include "model/model_config.h"

namespace hkv::testing {

// ||got - want|| / ||want|| (L2): how far bf16 logits are from a reference.
inline double RelativeError(const std::vector<float>& got, const std::vector<float>& want) {
  double num = 0, den = 0;
  for (size_t i = 0; i < want.size() && i < got.size(); ++i) {
    num += (got[i] - want[i]) * (got[i] - want[i]);
    den += static_cast<double>(want[i]) * want[i];
  }
  if (got.size() != want.size()) return 1e30;
  return std::sqrt(num / std::max(den, 1e-30));
}

// Whether the greedy token of `logits` is clear of bf16 noise: top-1 minus top-2 exceeds twice
// `tolerance` times the largest |logit| (closer ties may break either way between runs that
// round differently).
inline bool ClearGreedyMargin(std::vector<float> logits, double tolerance) {
  if (logits.size() < 2) return true;
  float scale = 0;
  for (float x : logits) scale = std::max(scale, std::fabs(x));
  std::partial_sort(logits.begin(), logits.begin() + 2, logits.end(), std::greater<float>());
  return logits[0] - logits[1] > 2 * tolerance * scale;
}

inline constexpr int32_t kBlockSize = 16;
inline constexpr int32_t kBlocksPerRow = 8;  // 128 tokens per (sequence, layer, head).

// A sequence with its own fixed blocks: slot `slot` (0..) owns rows' blocks
// [(slot * rows + r) * kBlocksPerRow, ...).
struct TestSeq {
  int32_t slot = 0;
  std::vector<int32_t> row_len;  // Tokens cached per row.
  int32_t position = 0;          // Tokens of the sequence computed so far.
};

class BatchBuilder {
 public:
  explicit BatchBuilder(const ModelConfig& c) {
    batch_.num_layers = c.num_layers;
    batch_.num_kv_heads = c.num_kv_heads;
    batch_.block_size = kBlockSize;
    batch_.kv_indptr = {0};
  }
  // Adds a plain step of `tokens` for `seq`, growing every row.
  void AddPlain(TestSeq* seq, std::vector<TokenId> tokens, bool sample, int32_t sample_step) {
    SequenceStep s;
    s.id = seq->slot;
    s.start_pos = seq->position;
    s.tokens = std::move(tokens);
    seq->position += s.tokens.size();
    s.sample = sample;
    s.sample_step = sample_step;
    const int32_t rows = batch_.num_layers * batch_.num_kv_heads;
    if (seq->row_len.empty()) seq->row_len.assign(rows, 0);
    std::vector<int32_t> after(rows);
    for (int32_t r = 0; r < rows; ++r) after[r] = seq->row_len[r] + s.tokens.size();
    AddRows(seq, after);
    batch_.seqs.push_back(std::move(s));
  }
  // Adds a compressed prefill with static capacities.
  void AddSelect(TestSeq* seq, std::vector<TokenId> tokens, std::vector<int32_t> capacity) {
    SequenceStep s;
    s.id = seq->slot;
    s.tokens = std::move(tokens);
    s.sample = true;
    s.select = true;
    s.selection.capacity = capacity;
    seq->position = s.tokens.size();
    const int32_t n = s.tokens.size(), w = s.selection.window;
    const int32_t rows = batch_.num_layers * batch_.num_kv_heads;
    seq->row_len.assign(rows, 0);
    std::vector<int32_t> after(rows);
    for (int32_t r = 0; r < rows; ++r) after[r] = std::min(capacity[r], n - w) + w;
    AddRows(seq, after);
    batch_.seqs.push_back(std::move(s));
  }
  // Adds the last chunk of a chunked compressed prefill: plain rows that hold the earlier
  // chunks grow by `tokens`, then the worker selects with `spec` and compacts in place. Call
  // Shrink() with the result's kept_per_head afterwards, as the block manager does.
  void AddLastChunk(TestSeq* seq, std::vector<TokenId> tokens, KvSelectionSpec spec) {
    AddPlain(seq, std::move(tokens), /*sample=*/true, /*sample_step=*/0);
    batch_.seqs.back().select = true;
    batch_.seqs.back().selection = std::move(spec);
  }
  static void Shrink(TestSeq* seq, const std::vector<int32_t>& kept) { seq->row_len = kept; }
  Batch Take() { return std::move(batch_); }

 private:
  void AddRows(TestSeq* seq, const std::vector<int32_t>& after) {
    const int32_t rows = after.size();
    for (int32_t r = 0; r < rows; ++r) {
      const int32_t first = (seq->slot * rows + r) * kBlocksPerRow;
      const int32_t blocks = (after[r] + kBlockSize - 1) / kBlockSize;
      for (int32_t b = 0; b < blocks; ++b) batch_.kv_indices.push_back(first + b);
      batch_.kv_indptr.push_back(batch_.kv_indices.size());
      batch_.kv_len_before.push_back(seq->row_len[r]);
      batch_.kv_len_after.push_back(after[r]);
      seq->row_len[r] = after[r];
    }
  }
  Batch batch_;
};

}  // namespace hkv::testing
