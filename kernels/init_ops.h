#pragma once
// Device-side weight initialisation: deterministic random matrices written straight into GPU
// memory, so that a benchmark with random weights of an 8B model neither builds 30 GiB of
// fp32 on the host nor copies it over PCIe. Host-only declarations; kernel in init_ops.cu.
//
// The value of element (r, c) of a logical [rows_total, cols_total] matrix depends only on
// (seed, r * cols_total + c), never on which part of the matrix a call writes: a tensor-parallel
// rank that writes its shard (row0/col0 offsets) gets exactly the elements of the full matrix.
//
// Thread-safety: stateless; ordered by the stream.

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/dtype.h"

namespace hkv::kernels {

// U(-scale, scale) from a counter-based hash of (seed, index): identical on host and device.
// `UniformFromHash` is the CPU reference the GPU test compares against.
inline float UniformFromHash(uint64_t seed, uint64_t index, float scale) {
  uint64_t z = seed + 0x9E3779B97F4A7C15ULL * (index + 1);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  z ^= z >> 31;
  return scale * (static_cast<float>(z >> 40) / 8388608.0f - 1.0f);
}

// Writes out[r, c] (row stride `ld` elements), r < rows, c < cols, with the value of element
// (row0 + r, col0 + c) of the logical [*, cols_total] matrix: UniformFromHash(seed,
// (row0 + r) * cols_total + col0 + c, scale), rounded to `dtype`. With scale == 0 every element
// is `fill` instead (norm weights).
// Grid: (ceil(rows * cols / 1024)) Block: (256).
cudaError_t FillUniformMatrix(DType dtype, void* out, int64_t ld, int64_t rows, int64_t cols,
                              int64_t row0, int64_t col0, int64_t cols_total, uint64_t seed,
                              float scale, float fill, cudaStream_t stream);

}  // namespace hkv::kernels
