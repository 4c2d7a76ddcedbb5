// Decode attention variant: 4 warps per CTA, 8 K and V loads in flight per lane.

#include "kernels/decode_attention_kernel.cuh"

namespace hkv::kernels::decode {

cudaError_t LaunchDecodeW4U8(DType dtype, int head_dim, int group, int grid, DecodeArgs a,
                             cudaStream_t stream) {
  return LaunchDecodeVariant<4, 8, false>(dtype, head_dim, group, grid, a, stream);
}

}  // namespace hkv::kernels::decode
