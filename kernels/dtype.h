#pragma once
// Storage dtypes the kernels accept. Host-only header (no CUDA needed).
//
// Thread-safe: constants only.

#include <cstddef>

namespace hkv::kernels {

// Storage type of activations, K/V and weights; arithmetic is always fp32.
enum class DType { kBf16, kFp16 };

// Returns the size in bytes of one element of `dtype`.
inline size_t DTypeSize(DType /*dtype*/) { return 2; }

}  // namespace hkv::kernels
