// Decode attention variant: 8 warps per CTA, 4 K and V loads in flight per lane.

#include "kernels/decode_attention_kernel.cuh"

namespace hkv::kernels::decode {

cudaError_t LaunchDecodeW8U4(DType dtype, int head_dim, int group, int grid, DecodeArgs a,
                             cudaStream_t stream) {
  return LaunchDecodeVariant<8, 4, false>(dtype, head_dim, group, grid, a, stream);
}

}  // namespace hkv::kernels::decode
