#pragma once
// The CUDA worker's host step layout: how one Batch becomes the flat arrays the kernels read.
// Host only (no CUDA include), so CPU-only builds test it field by field.
//
// Sequences run in internal order: decodes (one token), then plain prefill chunks, then
// compressed prefills (select); a graph step appends padding decodes up to its graph size.
// The last chunk of a chunked compressed prefill (select with start_pos > 0) runs as a plain
// prefill chunk (its rows hold the earlier chunks) and is also listed in `paged_select`: after
// its attention, each layer selects from its rows and compacts them in place.
//
//   ids/pos      [total]            tokens in internal order (padding: token 0 at position 0)
//   indptr_a     [rows + 1]         CSR over blocks after the step, rows (seq, layer, kv_head)
//   last_a       [rows]             tokens in each row's last block after the step
//   indptr_b/..  [prefill rows]     the paged prefix before the step, plain prefills only
//   cu_prefill   [prefills + 1]     token offsets of plain prefill chunks
//   cu_select    [selects + 1]      token offsets of compressed prefills
//   caps         [selects + paged selects, L, H]  selection capacity per (layer, kv_head)
//   ada_total    [selects, L]       adaptive: tokens the layer's heads share (-1: static caps)
//   ada_floor    [selects, L]       adaptive: each head's floor
//   ada_block_start [selects, L+1]  adaptive: the layer's reserved blocks in ada_blocks
//   slots        [L, plain_tokens, H]  KV slot of each plain token (-1: none); the plain
//                                   tokens (decodes, padding, plain prefills) come first
//   sample_*     [sampled rows]     which rows are sampled, and with what parameters
//
// Thread-compatible: a HostStep is built and read by the worker's thread.

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "common/batch.h"
#include "common/block_table.h"
#include "model/model_config.h"

namespace hkv {

// Sampling parameters of one sampled row, in kernels::SamplingRow's layout.
struct HostSamplingRow {
  float temperature = 0.0f;
  int32_t top_k = 0;  // 0: off
  float top_p = 1.0f;
  float uniform = 0.0f;
  float min_p = 0.0f;
};

// One step as the host builds it (see the header comment for the arrays).
struct HostStep {
  bool graph = false;
  int32_t num_decode = 0, num_prefill = 0, num_select = 0;  // num_decode includes padding
  int32_t real_decode = 0;
  int32_t total = 0;         // tokens (padding included)
  int32_t plain_tokens = 0;  // tokens of decodes and plain prefills
  int32_t max_prefill = 0, max_select = 0;
  std::vector<int32_t> order;        // internal -> batch index (real sequences only)
  std::vector<int32_t> token_start;  // per internal sequence
  std::vector<int32_t> ids, pos, indptr_a, indices_a, last_a, indptr_b, indices_b, last_b,
      cu_prefill, cu_select, caps;
  std::vector<int64_t> ada_total;  // adaptive selection; see the header comment
  std::vector<int32_t> ada_floor, ada_block_start, ada_blocks;
  std::vector<int64_t> slots;   // [L, plain_tokens, H]
  bool shared_indices = false;  // indices_a is the batch's kv_indices
  const std::vector<BlockId>* batch_indices = nullptr;
  // A delta step whose indices_a the device builds (device_page_table.h): indices_a stays
  // empty, indptr_a.back() entries are built from the last step's table and gather_upload,
  // by the copies in gather_segments (4 ints each: dst, src, count, from_upload).
  bool device_indices = false;
  std::vector<int32_t> gather_segments, gather_upload;
  // Per sampled row: internal sequence (-1: padding), which of its samples (SequenceStep::
  // num_samples), and the token row whose hidden state it reads.
  std::vector<int32_t> sample_seq, sample_index, sample_token;
  // Pending tokens (kPendingToken, common/batch.h): where each sits in `ids` (laid out as 0),
  // and its sequence's batch index. The worker fills them on the device before the step.
  std::vector<int32_t> pending_at, pending_of;
  std::vector<HostSamplingRow> sample_rows;
  // Chunked compressed prefills' last chunks: internal index (a plain prefill), and the prompt
  // length its rows hold after the step.
  std::vector<int32_t> paged_select, paged_select_len;
  // Adaptive paged selects: [paged selects, L] shared total (-1: static caps) and floor.
  std::vector<int64_t> paged_ada_total;
  std::vector<int32_t> paged_ada_floor;
  int32_t max_paged_select_len = 0;

  // Sequences whose kept counts the step reports: selects, then paged selects.
  int32_t num_kept_seqs() const { return num_select + static_cast<int32_t>(paged_select.size()); }
  // Row of internal sequence k2's (layer 0, head 0) in indptr_a (padding follows the decodes).
  int64_t first_row(int32_t k2, int64_t rows_per_seq) const {
    return (k2 < real_decode ? k2 : k2 + num_decode - real_decode) * rows_per_seq;
  }
};

// Where a delta step's rows' blocks come from (Batch::kv_delta, no CSR): the worker's tables,
// one row list per batch sequence, in batch order (PageTableMirror::RowsOf, which has checked
// each row's kv_len_after). With device_builds_indices, indices_a is left to the device.
struct StepRows {
  const std::vector<const std::vector<BlockTable>*>* seqs = nullptr;  // null: the batch's CSR
  bool device_builds_indices = false;
};

// Shapes a step layout needs: the worker's (one rank's) model shapes and pool.
struct StepLayoutShape {
  int32_t num_layers = 0;
  int32_t num_kv_heads = 0;
  int32_t vocab_size = 0;
  int32_t block_size = 16;
  // Tensor-parallel rank: ranks other than 0 sample nothing (rank 0's tokens are used).
  int32_t tp_rank = 0;
};

// Padded decode batch sizes with a graph (vLLM's choice of steps, up to 256).
inline constexpr int32_t kGraphBatchSizes[] = {1,  2,  4,  8,   16,  24,  32,  48,
                                               64, 80, 96, 128, 160, 192, 224, 256};

// The graph size a decode-only step of `num_seqs` sequences replays, or 0 (eager) when it
// is above `max_batch` or every graph size.
int32_t GraphBatchFor(int32_t num_seqs, int32_t max_batch);

// Lays out `batch` (already this worker's rows and block ids). `graph_batch` > 0 pads a
// decode-only step to that many sequences. INVALID_ARGUMENT for tokens outside the vocabulary
// (kPendingToken is laid out as token 0 and listed in pending_at, in a one-token step only),
// rows with too few blocks, or bad selections (adaptive ones without budgets or blocks per
// layer).
// REQUIRES: the batch's CSR sizes match its shape (ValidateBatchShape), or `rows` gives them.
absl::StatusOr<HostStep> BuildHostStep(const Batch& batch, const StepLayoutShape& shape,
                                       int32_t graph_batch, const StepRows& rows = {});

}  // namespace hkv
