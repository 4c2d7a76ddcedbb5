#pragma once
// The scheduler <-> worker step contract. Plain data, built by the engine thread, read by the
// worker threads during one step, never mutated by them.
//
// KV layout. The pool holds `num_blocks` head-blocks; a head-block stores `block_size` tokens of
// K and V for ONE KV head of ONE layer. A sequence owns one block table per (layer, kv_head),
// so every head of every layer may hold a different number of tokens (HeadKV budgets).
//
//   row r = (seq i in batch, layer l, kv_head h),  r = (i * num_layers + l) * num_kv_heads + h
//   kv_indptr[r] .. kv_indptr[r+1]   -> kv_indices: the row's blocks, in token order
//   kv_len_before[r]                 -> tokens of the row already cached (attention reads them)
//   kv_len_after[r]                  -> tokens of the row once this step has written its K/V
//
// The blocks of row r cover ceil(kv_len_after[r] / block_size) blocks. A plain step (decode, or
// an uncompressed prefill chunk) writes the K/V of every token it runs into every row, so
// kv_len_after = kv_len_before + tokens.size(). A compressed prefill (`select` set) at
// start_pos 0 runs the whole prompt at once, attends over full K/V held in per-layer scratch
// (never in the pool), then writes into each row only the tokens its head keeps: kv_len_after[r]
// is that head's kept count (window included), chosen by the plan, or by the worker for
// adaptive policies (then the result reports it, see SequenceResult::kept_per_head).
//
// Chunked compressed prefill: the earlier chunks are plain steps (the rows hold the prompt's
// full K/V, in transient blocks of the pool); the last chunk is a `select` step with
// start_pos > 0 whose rows are plain (kv_len_before = start_pos, kv_len_after = the prompt
// length n) and whose tokens hold the whole SnapKV window. Per layer the worker stores and
// attends the chunk like a plain one, then scores all n keys of each row with the window's
// queries, and compacts the kept tokens, in position order, into the row's first slots (kept
// token i moves to slot i). It reports kept_per_head; the scheduler then shrinks each row to
// its kept count, freeing the blocks past it. Kept sets equal the one-step prefill's.
//
// Page-table deltas. A worker that keeps the tables itself (Worker::AcceptsPageTableDeltas)
// gets `kv_delta` instead of the CSR: the changes since each sequence's last step
// (common/page_table_delta.h), O(changed rows) where the CSR is O(blocks), millions of entries
// at batch 256. kv_indptr and kv_indices are then empty; kv_len_before and kv_len_after stay
// (O(rows)). Applying every delta in order to a PageTableMirror (common/page_table_mirror.h)
// yields exactly the CSR the step would otherwise carry.
//
// Pending tokens (async scheduling, Worker::SupportsAsyncSteps). The engine may launch step
// N+1 before step N's results are back. A sequence whose token step N samples then runs it in
// step N+1 as kPendingToken, the sole token of a one-token step: the worker substitutes the
// token step N (the step launched just before) sampled for the same sequence.

#include <cstdint>
#include <optional>
#include <vector>

#include "absl/status/status.h"
#include "common/ids.h"
#include "common/page_table_delta.h"
#include "common/sampling_params.h"

namespace hkv {

// The most prompt positions a step may ask per (layer, query head) in an attention probe: the
// reply is num_layers x num_q_heads x top_n pairs per sequence, never the whole attention row.
inline constexpr int32_t kMaxProbeTopN = 256;

// A step's input token that the step launched just before samples (see the header comment).
inline constexpr TokenId kPendingToken = -2;

// How a compressed prefill chooses tokens; mirrors headkv's policies without depending on them.
struct KvSelectionSpec {
  int32_t window = 8;       // Last `window` prompt tokens are always kept.
  int32_t pool_kernel = 7;  // Max-pool kernel over the window scores.
  // Per (layer, kv_head), row-major [num_layers * num_kv_heads]: tokens kept besides the
  // window. Empty for an adaptive policy (adakv), which uses `layer_budget` instead.
  std::vector<int32_t> capacity;
  // Adaptive policies: per layer, the total tokens (window excluded) shared by its heads, and
  // the floor fraction of the per-head average each head keeps at least.
  std::vector<int32_t> layer_budget;
  float adaptive_floor_fraction = 0.2f;
};

struct SequenceStep {
  RequestId id = 0;
  std::vector<TokenId> tokens;  // Tokens to run this step.
  int32_t start_pos = 0;        // Position of tokens[0] (= tokens already computed).
  bool sample = false;          // Produce a next token (decode, or the last prefill chunk).
  int32_t sample_step = 0;      // Index of the token being sampled (0 = first generated).
  StepSampling sampling;        // The request's sampler settings (its stop lists stay behind).
  // Prompt length: tokens run at positions >= this are generated ones, which penalties count.
  int32_t num_prompt_tokens = 0;
  // Samples to draw from this step's logits (n > 1 at the end of a request's first prefill):
  // sample i uses seed SampleSeed(sampling.seed, i); samples 1.. come back in extra_tokens.
  int32_t num_samples = 1;
  // Only when start_pos == 0 and sampling.min_tokens > 0: the tokens (EOS, stop_token_ids) that
  // cannot be sampled before min_tokens. Sent once per prefill, kept by the worker (the step
  // stays free of client-sized data on every later step).
  std::vector<TokenId> min_tokens_banned;
  bool select = false;  // Compressed prefill: `selection` applies (start_pos > 0: last chunk).
  KvSelectionSpec selection;
  // Adaptive selection only (selection.capacity empty): the blocks reserved for each layer,
  // CSR over layers. The worker gives head h of layer l the next ceil(kept[l][h] / block_size)
  // blocks of layer l's list, in head order, and reports `kept_per_head`; the block manager
  // then splits the reservation the same way and frees what is left. The CSR rows of such a
  // sequence are empty with kv_len_before = kv_len_after = 0.
  std::vector<int32_t> layer_block_indptr;  // [num_layers + 1]
  std::vector<BlockId> layer_blocks;
  // Attention probe (hkv headkv-score): when probe_top_n > 0, on a one-token step over full-KV
  // rows (kv_len_after = start_pos + 1, position j of the row = token j), the worker reports
  // for every (layer, query head) the min(probe_top_n, probe_prompt_len) prompt positions
  // [0, probe_prompt_len) of highest softmax weight (the softmax over the whole row), highest
  // first, ties to the lower position (SequenceResult::probe_*). 0: no probe (the usual case).
  // REQUIRES when set: probe_top_n <= kMaxProbeTopN, 1 <= probe_prompt_len <= start_pos + 1.
  int32_t probe_top_n = 0;
  int32_t probe_prompt_len = 0;
};

struct Batch {
  int32_t num_layers = 0;
  int32_t num_kv_heads = 0;
  int32_t block_size = 0;
  std::vector<SequenceStep> seqs;
  // CSR page table, one row per (seq, layer, kv_head); see the header comment.
  std::vector<int32_t> kv_indptr;      // [rows + 1]
  std::vector<BlockId> kv_indices;     // [kv_indptr.back()]
  std::vector<int32_t> kv_len_before;  // [rows]
  std::vector<int32_t> kv_len_after;   // [rows]
  // Set instead of kv_indptr/kv_indices for a worker that takes deltas (see the header
  // comment): its seqs are this batch's sequences, in order.
  std::optional<PageTableDelta> kv_delta;
  // Block copies to do before the step (copy-on-write of a shared partial block): src -> dst.
  std::vector<std::pair<BlockId, BlockId>> block_copies;
  // Sequence-state changes since the last step, for workers that keep per-sequence sampling
  // history (penalties): `forks` (parent -> child, applied first) start a child's history as a
  // copy of its parent's; `released` sequences (finished, aborted, preempted) drop theirs.
  std::vector<std::pair<RequestId, RequestId>> forks;
  std::vector<RequestId> released;

  int64_t num_rows() const { return static_cast<int64_t>(seqs.size()) * num_layers * num_kv_heads; }
  // Whether the page table comes only as a delta (a batch may carry both a delta and the CSR).
  bool delta_only() const { return kv_delta.has_value() && kv_indptr.empty(); }
  int64_t row(int64_t seq, int32_t layer, int32_t head) const {
    return (seq * num_layers + layer) * num_kv_heads + head;
  }
};

// Log-probabilities of one sampled token under the model's raw distribution (log_softmax of
// the logits before penalties, temperature and cuts, as vLLM reports by default).
struct TokenLogprobs {
  TokenId token = -1;
  float logprob = 0.0f;
  // The k most likely tokens (k = sampling.logprobs), by logprob descending, lower id first.
  std::vector<TokenId> top_ids;
  std::vector<float> top_logprobs;
};

struct SequenceResult {
  RequestId id = 0;
  TokenId token = -1;                 // Sampled token when the step asked for one, else -1.
  std::vector<TokenId> extra_tokens;  // Samples 1 .. num_samples - 1 (see SequenceStep).
  // When sampling.logprobs >= 0: one per sample (token, then extra_tokens).
  std::vector<TokenLogprobs> logprobs;
  // Compressed prefill only: tokens kept per (layer, kv_head) [num_layers * num_kv_heads],
  // window included. Equals kv_len_after for static plans' one-step prefills (the plan's caps
  // for a chunked prefill's last chunk).
  std::vector<int32_t> kept_per_head;
  // Compressed prefill, filled only by a worker asked to (tests): the prompt positions each
  // (layer, kv_head) row kept, ascending, rows in kept_per_head's order and back to back
  // (row r's start at the sum of kept_per_head[0 .. r-1]).
  std::vector<int32_t> kept_positions;
  // Logits of the sampled position [vocab]; filled only by a worker asked to keep them (tests
  // and numerical checks).
  std::vector<float> logits;
  // Attention probe only (SequenceStep::probe_top_n > 0): [num_layers, num_q_heads, k], k =
  // min(probe_top_n, probe_prompt_len), layer-major, each row's positions by falling weight.
  std::vector<int32_t> probe_positions;
  std::vector<float> probe_weights;
};

struct BatchResult {
  std::vector<SequenceResult> seqs;  // Same order as Batch::seqs.
};

}  // namespace hkv
