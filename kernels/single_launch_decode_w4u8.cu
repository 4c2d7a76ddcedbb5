// Decode attention variant: 4 warps per CTA, 8 K and V loads in flight per lane.

#include "kernels/single_launch_decode_kernel.cuh"

namespace hkv::kernels::single_launch_decode {

cudaError_t LaunchSingleLaunchDecodeW4U8(DType dtype, int head_dim, int group, int grid,
                                         SingleLaunchDecodeArgs a, cudaStream_t stream) {
  return LaunchSingleLaunchDecodeVariant<4, 8, false>(dtype, head_dim, group, grid, a, stream);
}

}  // namespace hkv::kernels::single_launch_decode
