// The CUDA worker's delta steps (Batch::kv_delta): the host tables, and the device page table
// built from the last step's (device_page_table.h, kernels/page_table_gather.h).

#include <algorithm>

#include "kernels/page_table_gather.h"
#include "workers/cuda/cuda_worker_state.h"

namespace hkv {

static_assert(kMaxTableSegment == kernels::kMaxGatherSegment);
static_assert(kernels::kGatherSegmentInts == 4);

absl::Status CudaWorker::State::ApplyDelta(const Batch& b) {
  // A reset stream, or a delta the tables cannot follow: the device's table no longer
  // describes what the host holds, so the next steps upload their rows whole.
  if (b.kv_delta->reset) device_table.valid = false;
  if (absl::Status s = tables.Apply(*b.kv_delta); !s.ok()) {
    device_table.valid = false;
    tables.Clear();
    return s;
  }
  return tables.RowsOf(b, &step_rows);
}

absl::Status CudaWorker::State::BuildDeviceTable(const Batch& b, const HostStep& h,
                                                 const cuda_internal::DeviceStep& d) {
  const size_t entries = h.indptr_a.empty() ? 0 : static_cast<size_t>(h.indptr_a.back());
  DeviceBuffer& next = device_tables[1 - last_table];
  // Tables grow by a few blocks a step: grow by a quarter at once, not one reallocation (and
  // device synchronisation) a step.
  const size_t need = std::max<size_t>(entries, 1) * sizeof(int32_t);
  if (next.bytes() < need) HKV_RETURN_IF_ERROR(next.Reserve(need + need / 4 + 65536));
  const int32_t segments =
      static_cast<int32_t>(h.gather_segments.size() / kernels::kGatherSegmentInts);
  HKV_CUDA_RETURN_IF_ERROR(kernels::GatherPageTable(
      d.gather_segments, segments, device_tables[last_table].get<int32_t>(), d.gather_upload,
      d.indices_a_built, next.get<int32_t>(), stream));
  last_table = 1 - last_table;
  RecordDeviceTable(b, h, &device_table);
  return absl::OkStatus();
}

}  // namespace hkv
