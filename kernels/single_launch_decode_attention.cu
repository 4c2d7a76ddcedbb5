// RunSingleLaunchDecodeAttention: picks the kernel variant of the plan's options and launches it
// (one kernel per call). The kernel is in single_launch_decode_kernel.cuh, the planners in
// single_launch_decode_plan.cc (host) and single_launch_decode_plan_device.cu (GPU).

#include "kernels/single_launch_decode_attention.h"
#include "kernels/single_launch_decode_kernel.cuh"
#include "kernels/single_launch_decode_plan.h"

namespace hkv::kernels {

cudaError_t RunSingleLaunchDecodeAttention(const SingleLaunchDecodePlan& plan,
                                           const PagedKvView& kv, DType dtype, const void* q,
                                           int64_t q_seq_stride, void* out, int64_t out_seq_stride,
                                           float scale, cudaStream_t stream) {
  const SingleLaunchDecodeOptions& o = plan.options;
  if (!ValidSingleLaunchDecodeOptions(o) || kv.head_dim != o.head_dim || kv.num_kv_heads < 1 ||
      kv.block_size < 1 || (kv.block_size & (kv.block_size - 1)) != 0 ||
      plan.workspace == nullptr) {
    return cudaErrorInvalidValue;
  }
  const int grid = o.fixed_grid || plan.device_planned ? o.max_work_items : plan.num_ctas;
  if (grid == 0) return cudaSuccess;
  single_launch_decode::SingleLaunchDecodeArgs a;
  a.layout = single_launch_decode::MetaLayout(o);
  a.meta =
      plan.device_meta != nullptr ? plan.device_meta : static_cast<const int32_t*>(plan.workspace);
  // The counters are the one part of the work list the kernel writes; the list is device
  // memory of the caller (a staging buffer or the workspace), const only to the planner's API.
  a.arrivals = const_cast<int32_t*>(a.meta) + a.layout.row_arrivals;
  a.partial_o = reinterpret_cast<float*>(static_cast<int32_t*>(plan.workspace) + a.layout.total);
  a.partial_lse = a.partial_o + static_cast<int64_t>(o.max_work_items) * o.group_size * o.head_dim;
  a.indices = kv.indices;
  a.k_pool = kv.k_pool;
  a.v_pool = kv.v_pool;
  a.block_stride = kv.block_stride;
  a.block_shift = __builtin_ctz(static_cast<unsigned>(kv.block_size));
  a.num_kv_heads = kv.num_kv_heads;
  a.group = o.group_size;
  a.q = q;
  a.q_seq_stride = q_seq_stride;
  a.out = out;
  a.out_seq_stride = out_seq_stride;
  a.scale_log2 = scale * 1.4426950408889634f;
  const bool wide = o.cta_threads == 256;
  const bool deep = o.loads_in_flight == 8;
  if (o.prefetch) {
    return wide ? single_launch_decode::LaunchSingleLaunchDecodeW8U4P(dtype, o.head_dim,
                                                                      o.group_size, grid, a, stream)
                : single_launch_decode::LaunchSingleLaunchDecodeW4U4P(
                      dtype, o.head_dim, o.group_size, grid, a, stream);
  }
  if (wide) {
    return deep ? single_launch_decode::LaunchSingleLaunchDecodeW8U8(dtype, o.head_dim,
                                                                     o.group_size, grid, a, stream)
                : single_launch_decode::LaunchSingleLaunchDecodeW8U4(dtype, o.head_dim,
                                                                     o.group_size, grid, a, stream);
  }
  return deep ? single_launch_decode::LaunchSingleLaunchDecodeW4U8(dtype, o.head_dim, o.group_size,
                                                                   grid, a, stream)
              : single_launch_decode::LaunchSingleLaunchDecodeW4U4(dtype, o.head_dim, o.group_size,
                                                                   grid, a, stream);
}

}  // namespace hkv::kernels
