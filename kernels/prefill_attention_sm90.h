#pragma once
// The Hopper (sm_90a) prefill attention kernel behind RunPrefillAttention: wgmma + TMA,
// one producer and two consumer warpgroups. Internal to kernels/; callers use
// prefill_attention.h, whose PrefillAttentionArgs::kernel forces one kernel or the other.
//
// Thread-safety: stateless; ordered by the stream.

#include <cuda_runtime.h>

#include "kernels/prefill_attention.h"

namespace hkv::kernels {

// True when the wgmma kernel can run `args` on the current device: an sm_90 GPU with the
// sm_90a code loaded, total_q > 0, 16-byte aligned pointers and strides (TMA and cp.async).
bool PrefillAttentionSm90Supported(const PrefillAttentionArgs& args);

// Runs the wgmma kernel. REQUIRES: args validated by RunPrefillAttention and
// PrefillAttentionSm90Supported(args). Returns cudaErrorNotSupported when the tensor maps
// cannot be built.
cudaError_t RunPrefillAttentionSm90(const PrefillAttentionArgs& args, cudaStream_t stream);

}  // namespace hkv::kernels
