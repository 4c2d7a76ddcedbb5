#pragma once
// Host steps every decode-attention planner shares (decode_attention_plan.cc and the
// single-launch planners): the SM count to plan for, and the rows' lengths read from a host
// CSR page table. Internal to kernels/.
//
// Thread-safe: stateless functions.

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "kernels/paged_kv.h"

namespace hkv::kernels {

// *num_sms = requested when positive, else the current device's SM count.
inline cudaError_t ResolveNumSms(int32_t requested, int* num_sms) {
  *num_sms = requested;
  if (requested > 0) return cudaSuccess;
  int dev = 0;
  cudaError_t e = cudaGetDevice(&dev);
  if (e == cudaSuccess) e = cudaDeviceGetAttribute(num_sms, cudaDevAttrMultiProcessorCount, dev);
  return e;
}

// The planned rows of a host CSR page table: logical row r reads CSR row host_row_ids[r] (r
// when host_row_ids is null). Fills each row's length and first block's index position, their
// sum and the longest. Returns false for a malformed table (decreasing indptr, last_len
// outside 1..block_size on a non-empty row).
struct PlannedRows {
  std::vector<int64_t> lens;
  std::vector<int32_t> first_block;
  int64_t total = 0, longest = 0;
};
inline bool ReadPlannedRows(const int32_t* host_indptr, const int32_t* host_last_len,
                            int32_t num_rows, int32_t block_size, const int32_t* host_row_ids,
                            PlannedRows* rows) {
  rows->lens.assign(num_rows, 0);
  rows->first_block.assign(num_rows, 0);
  rows->total = rows->longest = 0;
  for (int32_t r = 0; r < num_rows; ++r) {
    const int32_t csr = host_row_ids != nullptr ? host_row_ids[r] : r;
    const int32_t blocks = csr < 0 ? -1 : host_indptr[csr + 1] - host_indptr[csr];
    if (blocks < 0 || (blocks > 0 && (host_last_len[csr] < 1 || host_last_len[csr] > block_size))) {
      return false;
    }
    rows->lens[r] = PagedRowLength(host_indptr, host_last_len, csr, block_size);
    rows->first_block[r] = host_indptr[csr];
    rows->total += rows->lens[r];
    rows->longest = std::max(rows->longest, rows->lens[r]);
  }
  return true;
}

}  // namespace hkv::kernels
