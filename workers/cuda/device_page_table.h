#pragma once
// The CUDA worker's page table on the device, kept from step to step: each delta step
// (Batch::kv_delta) builds its indices_a (step_layout.h) on the GPU from the last step's, so
// the host sends the copies and the new blocks, not the table. A decode step at batch 256 x
// 512 context lists 2M blocks (8 MB) and changes a few thousand.
//
// The device holds two tables; a step's gather (kernels/page_table_gather.h) reads the last
// one and writes the step's indices_a (in the step's inputs, where the kernels and graphs read
// it) and the other table, which becomes the last one. DeviceTableState is the host's record
// of the last table's layout: which sequences it holds, and where their rows start.
//
// A sequence of this step that the last table holds (same id, not `fresh` in the delta) copies
// its unchanged rows from it as whole runs (one segment for all of a sequence's rows when none
// took a block) and, per changed row, the `keep` leading blocks; the blocks past them and every
// row of the other sequences come from the upload.
//
// Host only (no CUDA include); thread-compatible, worker thread.

#include <cstdint>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "common/batch.h"
#include "common/block_table.h"
#include "common/ids.h"
#include "workers/cuda/step_layout.h"

namespace hkv {

// The most entries one gather segment copies (kernels::kMaxGatherSegment).
inline constexpr int32_t kMaxTableSegment = 4096;

// What the device's last table holds: valid only after a delta step that built it.
struct DeviceTableState {
  bool valid = false;
  std::vector<int32_t> indptr;                        // the last step's indptr_a
  absl::flat_hash_map<RequestId, int64_t> first_row;  // each sequence's first row in it
};

// Fills h->gather_segments and h->gather_upload: the copies that build h's indices_a from
// `last` and the upload. `rows` are the batch's sequences' tables (StepRows::seqs).
// REQUIRES: h was laid out by BuildHostStep with StepRows{&rows, true}; batch.kv_delta is set.
void PlanTableGather(const Batch& batch, const std::vector<const std::vector<BlockTable>*>& rows,
                     const DeviceTableState& last, HostStep* h);

// Records h's table as the device's last one (after its gather was launched).
void RecordDeviceTable(const Batch& batch, const HostStep& h, DeviceTableState* state);

// The indices_a that the gather builds, on the host (tests, checks): what the segments copy
// from `last_indices` and h.gather_upload.
std::vector<int32_t> ApplyTableGather(const HostStep& h, const std::vector<int32_t>& last_indices);

}  // namespace hkv
