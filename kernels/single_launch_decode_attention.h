#pragma once
// Paged per-head decode attention (one query token per sequence) with GQA and split-K
// (flash-decoding). Host-only declarations; the kernels live in single_launch_decode_attention.cu.
//
// Flow (flashinfer style): once per step, PlanSingleLaunchDecodeAttention() reads host copies of
// the page table, cuts every row (seq, kv_head) into chunks of at most `chunk_tokens` tokens so
// that long and short rows spread evenly over the GPU, and copies the work list into the caller's
// device workspace. Then RunSingleLaunchDecodeAttention() runs per layer (any layer sharing the
// page-table shape): no allocation, no host sync; with `fixed_grid` the launch shape depends only
// on the capacities, so it can be captured in a CUDA graph and replayed after a new plan.
//
//   work item = (row, token range): one CTA reads that K/V range ONCE for all query heads of
//   the row's GQA group and writes either the final output (row not split) or a partial
//   (output, log-sum-exp); the CTA that finishes a split row's last item merges its partials
//   (a per-row arrival counter in the work list, back at zero after every call), so a call is
//   one kernel. A CTA runs a contiguous run of items: one item each while they fit in one
//   wave, cost-balanced runs of many short items beyond that.
//
// The work list can also be built on the GPU (PlanSingleLaunchDecodeAttentionOnDevice) from device
// page tables, with the same split rule; the host planner is its reference.
//
// Status: this family's GPU tests (decode_attention_paths_test, single_launch_decode_attention_
// test) pass on an H200, but the variant sweep there (bench/README.md, 2026-12-02) found no
// variant faster than decode_attention.h where it matters (0.89-0.98x on long uniform rows,
// 0.84-1.07x on HeadKV rows), so the engine keeps decode_attention.h; this family stays for the
// benches and as the device-side planner's reference.
//
// Thread-safety: the plan is plain data; calls on one stream are ordered by the stream.

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <vector>

#include "kernels/dtype.h"
#include "kernels/paged_kv.h"

namespace hkv::kernels {

struct SingleLaunchDecodeOptions {
  int32_t max_rows = 0;        // capacity: rows (seq, kv_head) per step
  int32_t max_work_items = 0;  // capacity: work items (>= max_rows)
  int32_t group_size = 1;      // query heads per kv head (1..8)
  int32_t head_dim = 128;      // 64 or 128
  int32_t num_sms = 0;         // 0: read from the current device
  bool fixed_grid = false;     // launch max_work_items CTAs (CUDA-graph replay of any plan)
  // Tuning; 0 keeps the default. The kernel bench sweeps them (bench/run_kernel_bench.py).
  int32_t cta_threads = 0;       // threads per CTA: 128 (default) or 256
  int32_t loads_in_flight = 0;   // 16-byte K and V loads per lane before the math: 4 (default), 8
  bool prefetch = false;         // issue the next K/V loads before the math (loads_in_flight 4)
  int32_t items_per_cta = 0;     // work items per CTA; default: one while they fit in a wave
  int32_t min_split_tokens = 0;  // shortest split of a row (default 128)
  int32_t split_tokens = 0;      // split every row into chunks of this many tokens (no search)
  int32_t ctas_per_sm = 0;       // CTA slots per SM that the planner fills (default 4)
};

struct SingleLaunchDecodePlan {
  SingleLaunchDecodeOptions options;
  int32_t num_rows = 0;
  int32_t num_work_items = 0;
  int32_t num_merge_rows = 0;  // rows split over several work items
  int32_t num_ctas = 0;        // CTAs that run the items (without fixed_grid: the grid)
  int32_t chunk_tokens = 0;
  // Built by PlanSingleLaunchDecodeAttentionOnDevice: the counts above live on the device only, and
  // RunSingleLaunchDecodeAttention launches the fixed grid.
  bool device_planned = false;
  void* workspace = nullptr;  // device; SingleLaunchDecodeWorkspaceBytes(options) bytes
  std::vector<int32_t>
      host_meta;  // the work list as copied to the device (PlanSingleLaunchDecodeAttention)
  std::vector<int64_t>
      row_lengths;  // tokens of each planned row (RebaseSingleLaunchDecodePlan compares)
  // Where RunSingleLaunchDecodeAttention reads the work list: null means the start of `workspace`.
  // Set by callers of BuildSingleLaunchDecodePlan, which stage the lists of many layers and copy
  // them at once.
  const int32_t* device_meta = nullptr;
};

// Returns the device workspace size in bytes for `options`.
size_t SingleLaunchDecodeWorkspaceBytes(const SingleLaunchDecodeOptions& options);

// Int32 words of one work list (the part of the workspace that a plan copies).
size_t SingleLaunchDecodeMetaInts(const SingleLaunchDecodeOptions& options);

// Builds the work list for `num_rows` rows from HOST copies of the CSR indptr and last_len,
// and copies it (cudaMemcpyAsync on `stream`) into `workspace`. Logical row r (= seq *
// num_kv_heads + kv_head of this layer) reads CSR row host_row_ids[r], or row r when
// host_row_ids is null; so one batch-wide CSR (e.g. rows (seq, layer, kv_head) of
// common/batch.h) serves every layer, one plan per layer. The plan bakes in each row's offset
// into `indices` and its length: re-plan whenever they change (once per step); the device
// indices array (PagedKvView::indices) must follow the host indptr given here.
// Returns cudaErrorInvalidValue for bad options (group, head_dim, capacities, block_size not a
// power of two, tuning values), num_rows > max_rows, or a malformed page table (decreasing
// indptr, last_len outside 1..block_size on a non-empty row).
cudaError_t PlanSingleLaunchDecodeAttention(const SingleLaunchDecodeOptions& options,
                                            const int32_t* host_indptr,
                                            const int32_t* host_last_len, int32_t num_rows,
                                            int32_t block_size, void* workspace,
                                            cudaStream_t stream, SingleLaunchDecodePlan* plan,
                                            const int32_t* host_row_ids = nullptr);

// PlanSingleLaunchDecodeAttention without the copy: writes the work list
// (SingleLaunchDecodeMetaInts(options) words) to `host_meta_out` and fills `plan` except
// workspace/device_meta, which the caller sets after copying the list to the device itself (one
// copy for all layers of a step, or into the fixed buffers a CUDA graph reads). Host only; same
// errors as PlanSingleLaunchDecodeAttention.
cudaError_t BuildSingleLaunchDecodePlan(const SingleLaunchDecodeOptions& options,
                                        const int32_t* host_indptr, const int32_t* host_last_len,
                                        int32_t num_rows, int32_t block_size,
                                        const int32_t* host_row_ids, int32_t* host_meta_out,
                                        SingleLaunchDecodePlan* plan);

// Reuses `planned` (built by BuildSingleLaunchDecodePlan into `planned_meta`) for other rows of the
// same lengths, e.g. the next layer of a step whose heads all hold the same tokens: copies the work
// list to `host_meta_out` and points every item at its new row's first block. O(rows + items)
// instead of a new plan. Returns false, writing nothing, when a row's length differs.
bool RebaseSingleLaunchDecodePlan(const SingleLaunchDecodePlan& planned,
                                  const int32_t* planned_meta, const int32_t* host_indptr,
                                  const int32_t* host_last_len, int32_t block_size,
                                  const int32_t* host_row_ids, int32_t* host_meta_out);

// Builds the work list on the GPU from DEVICE copies of indptr, last_len and (optional) row
// ids, into `workspace` (its first SingleLaunchDecodeMetaInts(options) words): one single-CTA
// kernel on `stream`, no host read of the page table, a launch shape fixed by the capacities, so it
// can be captured in a CUDA graph together with the attention calls and replayed after the tables
// change. `device_num_rows` (optional, device) overrides num_rows (then the capacity, at most
// max_rows) at run time. The split rule is the host planner's with the makespan estimated by
// its large-list bound (single_launch_decode_plan.h: MakespanBound); with options.split_tokens both
// planners give the same splits, hence bit-identical outputs. Items are in row order (the host
// planner sorts them longest first). A malformed row (last_len outside 1..block_size) is
// planned empty and counted in word 2 of the work list; a split_tokens that would need more
// than max_work_items items plans no splits (the host planner refuses it). Fills `plan` with
// device_planned = true. Returns cudaErrorInvalidValue for bad options or num_rows > max_rows.
cudaError_t PlanSingleLaunchDecodeAttentionOnDevice(
    const SingleLaunchDecodeOptions& options, const int32_t* device_indptr,
    const int32_t* device_last_len, int32_t num_rows, int32_t block_size, void* workspace,
    cudaStream_t stream, SingleLaunchDecodePlan* plan, const int32_t* device_row_ids = nullptr,
    const int32_t* device_num_rows = nullptr);

// Computes out = softmax(q K^T * scale) V per query head over its kv head's paged row.
// Uses kv.indices and the pools (indptr/last_len were consumed by the plan).
//   q:   device [num_seqs, num_kv_heads * group_size, head_dim], seq stride q_seq_stride elems
//   out: device [num_seqs, num_kv_heads * group_size, head_dim], seq stride out_seq_stride
// num_seqs = plan.num_rows / kv.num_kv_heads. Rows of length 0 give zeros.
// Grid: (CTAs; max_work_items with fixed_grid) Block: (cta_threads). One kernel: the work
// list's arrival counters are written during the call and are zero again when it ends.
cudaError_t RunSingleLaunchDecodeAttention(const SingleLaunchDecodePlan& plan,
                                           const PagedKvView& kv, DType dtype, const void* q,
                                           int64_t q_seq_stride, void* out, int64_t out_seq_stride,
                                           float scale, cudaStream_t stream);

}  // namespace hkv::kernels
