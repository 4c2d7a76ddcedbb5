// Decode attention variant: 4 warps per CTA, 4 K and V loads in flight per lane, and the next
// iteration's loads issued before this one's math.

#include "kernels/single_launch_decode_kernel.cuh"

namespace hkv::kernels::single_launch_decode {

cudaError_t LaunchSingleLaunchDecodeW4U4P(DType dtype, int head_dim, int group, int grid,
                                          SingleLaunchDecodeArgs a, cudaStream_t stream) {
  return LaunchSingleLaunchDecodeVariant<4, 4, true>(dtype, head_dim, group, grid, a, stream);
}

}  // namespace hkv::kernels::single_launch_decode
