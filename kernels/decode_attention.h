#pragma once
// Paged per-head decode attention (one query token per sequence) with GQA and split-K
// (flash-decoding). Host-only declarations; the kernels live in decode_attention.cu.
//
// Flow (flashinfer style): once per step, PlanDecodeAttention() reads host copies of the page
// table, cuts every row (seq, kv_head) into chunks of at most `chunk_tokens` tokens so that
// long and short rows spread evenly over the GPU, and copies the work list into the caller's
// device workspace. Then RunDecodeAttention() runs per layer (any layer sharing the page-table
// shape): no allocation, no host sync; with `fixed_grid` the launch shape depends only on the
// capacities, so it can be captured in a CUDA graph and replayed after a new plan.
//
//   work item = (row, token range): one CTA reads that K/V range ONCE for all query heads of
//   the row's GQA group and writes either the final output (row not split) or a partial
//   (output, log-sum-exp) that the merge kernel combines.
//
// Thread-safety: the plan is plain data; calls on one stream are ordered by the stream.

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <vector>

#include "kernels/dtype.h"
#include "kernels/paged_kv.h"

namespace hkv::kernels {

inline constexpr int32_t kDefaultKvStages = 2;
inline constexpr int32_t kMaxKvStages = 4;

// The DecodePlanOptions::kv_stages values the kernels serve: 0, or 2..kMaxKvStages.
constexpr bool ValidKvStages(int32_t stages) {
  return stages == 0 || (stages >= 2 && stages <= kMaxKvStages);
}

struct DecodePlanOptions {
  int32_t max_rows = 0;        // capacity: rows (seq, kv_head) per step
  int32_t max_work_items = 0;  // capacity: work items (>= max_rows)
  int32_t group_size = 1;      // query heads per kv head (1..8)
  int32_t head_dim = 128;      // 64 or 128
  int32_t num_sms = 0;         // 0: read from the current device
  bool fixed_grid = false;     // launch max_work_items CTAs (CUDA-graph replay of any plan)
  // How K/V reach the math: 0 = 16-byte loads into registers, kUnroll per lane in flight; 2..4
  // = cp.async into a per-lane ring in shared memory of that many iterations (16 KB each), so
  // more bytes fly per SM without holding registers. Same results either way.
  int32_t kv_stages = kDefaultKvStages;
};

struct DecodePlan {
  DecodePlanOptions options;
  int32_t num_rows = 0;
  int32_t num_work_items = 0;
  int32_t num_merge_rows = 0;  // rows split over several work items
  int32_t chunk_tokens = 0;
  void* workspace = nullptr;         // device; DecodeWorkspaceBytes(options) bytes
  std::vector<int32_t> host_meta;    // the work list as copied to the device (PlanDecodeAttention)
  std::vector<int64_t> row_lengths;  // tokens of each planned row (RebaseDecodePlan compares)
  // Where RunDecodeAttention reads the work list: null means the start of `workspace`. Set by
  // callers of BuildDecodePlan, which stage the lists of many layers and copy them at once.
  const int32_t* device_meta = nullptr;
};

// Returns the device workspace size in bytes for `options`.
size_t DecodeWorkspaceBytes(const DecodePlanOptions& options);

// Int32 words of one work list (the part of the workspace that a plan copies).
size_t DecodeMetaInts(const DecodePlanOptions& options);

// Builds the work list for `num_rows` rows from HOST copies of the CSR indptr and last_len,
// and copies it (cudaMemcpyAsync on `stream`) into `workspace`. Logical row r (= seq *
// num_kv_heads + kv_head of this layer) reads CSR row host_row_ids[r], or row r when
// host_row_ids is null; so one batch-wide CSR (e.g. rows (seq, layer, kv_head) of
// common/batch.h) serves every layer, one plan per layer. The plan bakes in each row's offset
// into `indices` and its length: re-plan whenever they change (once per step); the device
// indices array (PagedKvView::indices) must follow the host indptr given here.
// Returns cudaErrorInvalidValue for bad options (group, head_dim, capacities, kv_stages, block_size
// not a power of two), num_rows > max_rows, or a malformed page table (decreasing indptr, last_len
// outside 1..block_size on a non-empty row).
cudaError_t PlanDecodeAttention(const DecodePlanOptions& options, const int32_t* host_indptr,
                                const int32_t* host_last_len, int32_t num_rows, int32_t block_size,
                                void* workspace, cudaStream_t stream, DecodePlan* plan,
                                const int32_t* host_row_ids = nullptr);

// PlanDecodeAttention without the copy: writes the work list (DecodeMetaInts(options) words)
// to `host_meta_out` and fills `plan` except workspace/device_meta, which the caller sets after
// copying the list to the device itself (one copy for all layers of a step, or into the fixed
// buffers a CUDA graph reads). Host only; same errors as PlanDecodeAttention.
cudaError_t BuildDecodePlan(const DecodePlanOptions& options, const int32_t* host_indptr,
                            const int32_t* host_last_len, int32_t num_rows, int32_t block_size,
                            const int32_t* host_row_ids, int32_t* host_meta_out, DecodePlan* plan);

// Reuses `planned` (built by BuildDecodePlan into `planned_meta`) for other rows of the same
// lengths, e.g. the next layer of a step whose heads all hold the same tokens: copies the work
// list to `host_meta_out` and points every item at its new row's first block. O(rows + items)
// instead of a new plan. Returns false, writing nothing, when a row's length differs.
bool RebaseDecodePlan(const DecodePlan& planned, const int32_t* planned_meta,
                      const int32_t* host_indptr, const int32_t* host_last_len, int32_t block_size,
                      const int32_t* host_row_ids, int32_t* host_meta_out);

// Computes out = softmax(q K^T * scale) V per query head over its kv head's paged row.
// Uses kv.indices and the pools (indptr/last_len were consumed by the plan).
//   q:   device [num_seqs, num_kv_heads * group_size, head_dim], seq stride q_seq_stride elems
//   out: device [num_seqs, num_kv_heads * group_size, head_dim], seq stride out_seq_stride
// num_seqs = plan.num_rows / kv.num_kv_heads. Rows of length 0 give zeros.
// Grid: (work items) Block: (128); then merge Grid: (rows, group) Block: (head_dim).
cudaError_t RunDecodeAttention(const DecodePlan& plan, const PagedKvView& kv, DType dtype,
                               const void* q, int64_t q_seq_stride, void* out,
                               int64_t out_seq_stride, float scale, cudaStream_t stream);

}  // namespace hkv::kernels
