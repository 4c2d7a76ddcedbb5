#include "kernels/page_table_gather.h"

namespace hkv::kernels {
namespace {

__global__ void GatherPageTableKernel(const int32_t* __restrict__ segments,
                                      const int32_t* __restrict__ prev,
                                      const int32_t* __restrict__ upload, int32_t* __restrict__ out,
                                      int32_t* __restrict__ out_copy) {
  const int32_t* seg = segments + static_cast<int64_t>(blockIdx.x) * kGatherSegmentInts;
  const int32_t dst = seg[0], src = seg[1], count = seg[2];
  const int32_t* from = (seg[3] != 0 ? upload : prev) + src;
  for (int32_t i = threadIdx.x; i < count; i += blockDim.x) {
    const int32_t v = __ldg(from + i);
    out[dst + i] = v;
    if (out_copy != nullptr) out_copy[dst + i] = v;
  }
}

}  // namespace

cudaError_t GatherPageTable(const int32_t* segments, int32_t num_segments, const int32_t* prev,
                            const int32_t* upload, int32_t* out, int32_t* out_copy,
                            cudaStream_t stream) {
  if (num_segments < 0) return cudaErrorInvalidValue;
  if (num_segments == 0) return cudaSuccess;
  GatherPageTableKernel<<<num_segments, 256, 0, stream>>>(segments, prev, upload, out, out_copy);
  return cudaGetLastError();
}

}  // namespace hkv::kernels
