#pragma once
// The device page table of a step, built on the GPU from the last step's and the few entries
// the host sends (workers/cuda/device_page_table.h plans the copies). A decode step at batch
// 256 lists millions of blocks but changes a few thousand: the host sends a copy list and the
// new blocks instead of the whole table. Host-only declarations; kernel in page_table_gather.cu.
//
// Thread-safety: stateless; ordered by the stream.

#include <cuda_runtime.h>

#include <cstdint>

namespace hkv::kernels {

// A segment is kGatherSegmentInts ints: dst, src, count, from_upload (0: src indexes `prev`,
// 1: `upload`). The planner splits longer runs so that one CTA copies one segment quickly.
inline constexpr int32_t kGatherSegmentInts = 4;
inline constexpr int32_t kMaxGatherSegment = 4096;

// For each segment s < num_segments: out[dst + i] = (from_upload ? upload : prev)[src + i] for
// i < count, and the same into out_copy when it is not null (the next step's `prev`).
// REQUIRES: segments' destinations do not overlap; prev and upload do not alias out/out_copy;
// 0 <= count <= kMaxGatherSegment. INVALID_VALUE for num_segments < 0.
// Grid: (num_segments) Block: (256).
cudaError_t GatherPageTable(const int32_t* segments, int32_t num_segments, const int32_t* prev,
                            const int32_t* upload, int32_t* out, int32_t* out_copy,
                            cudaStream_t stream);

}  // namespace hkv::kernels
