// Paged K/V writes; see kv_append.h.

#include "kernels/cuda_common.cuh"
#include "kernels/kv_append.h"

namespace hkv::kernels {
namespace {

struct AppendParams {
  const int32_t* indptr;
  const int32_t* indices;
  const int32_t* last_len;
  uint4* k_pool;  // 16-byte chunks
  uint4* v_pool;
  int64_t block_stride_chunks;
  int32_t block_size, num_kv_heads, chunks;  // chunks = head_dim / 8
  int32_t row_seq_stride, row_offset;
  const uint4* k_new;
  const uint4* v_new;
  int64_t stride_chunks;
};

__global__ void AppendDecodeKernel(AppendParams p) {
  WaitForPriorGrid();
  AllowDependentsIfSmallGrid();
  const int seq = blockIdx.x / p.num_kv_heads, h = blockIdx.x % p.num_kv_heads, c = threadIdx.x;
  const int row = seq * p.row_seq_stride + p.row_offset + h;
  const int b0 = p.indptr[row], b1 = p.indptr[row + 1];
  if (b1 <= b0 || c >= p.chunks) return;
  const int64_t dst = p.indices[b1 - 1] * p.block_stride_chunks +
                      static_cast<int64_t>(p.last_len[row] - 1) * p.chunks + c;
  const int64_t src = seq * p.stride_chunks + static_cast<int64_t>(h) * p.chunks + c;
  p.k_pool[dst] = p.k_new[src];
  p.v_pool[dst] = p.v_new[src];
}

__global__ void AppendSlotsKernel(AppendParams p, const int64_t* slots) {
  WaitForPriorGrid();
  AllowDependentsIfSmallGrid();
  const int64_t i = blockIdx.x;  // token * num_kv_heads + head
  const int c = threadIdx.x;
  const int64_t slot = slots[i];
  if (slot < 0 || c >= p.chunks) return;
  const int64_t t = i / p.num_kv_heads, h = i % p.num_kv_heads;
  const int64_t dst =
      (slot / p.block_size) * p.block_stride_chunks + (slot % p.block_size) * p.chunks + c;
  const int64_t src = t * p.stride_chunks + h * p.chunks + c;
  p.k_pool[dst] = p.k_new[src];
  p.v_pool[dst] = p.v_new[src];
}

cudaError_t MakeParams(const PagedKvView& kv, const void* k_new, const void* v_new, int64_t stride,
                       AppendParams* p) {
  if (kv.head_dim <= 0 || kv.head_dim % 8 != 0 || kv.block_stride % 8 != 0 || stride % 8 != 0 ||
      kv.num_kv_heads < 1 || kv.block_size < 1) {
    return cudaErrorInvalidValue;
  }
  p->indptr = kv.indptr;
  p->indices = kv.indices;
  p->last_len = kv.last_len;
  p->k_pool = static_cast<uint4*>(const_cast<void*>(kv.k_pool));
  p->v_pool = static_cast<uint4*>(const_cast<void*>(kv.v_pool));
  p->block_stride_chunks = kv.block_stride / 8;
  p->block_size = kv.block_size;
  p->num_kv_heads = kv.num_kv_heads;
  p->chunks = kv.head_dim / 8;
  p->row_seq_stride = kv.row_seq_stride > 0 ? kv.row_seq_stride : kv.num_kv_heads;
  p->row_offset = kv.row_offset;
  p->k_new = static_cast<const uint4*>(k_new);
  p->v_new = static_cast<const uint4*>(v_new);
  p->stride_chunks = stride / 8;
  return cudaSuccess;
}

}  // namespace

cudaError_t AppendDecodeKv(DType /*dtype: both 2-byte*/, const PagedKvView& kv, const void* k_new,
                           const void* v_new, int64_t stride, int32_t num_seqs,
                           cudaStream_t stream) {
  AppendParams p;
  cudaError_t e = MakeParams(kv, k_new, v_new, stride, &p);
  if (e != cudaSuccess || num_seqs <= 0) return num_seqs < 0 ? cudaErrorInvalidValue : e;
  return LaunchOverlapped(AppendDecodeKernel, dim3(num_seqs * kv.num_kv_heads),
                          dim3((p.chunks + 31) / 32 * 32), 0, stream, p);
}

cudaError_t AppendKvSlots(DType /*dtype: both 2-byte*/, const PagedKvView& kv, const void* k_new,
                          const void* v_new, int64_t stride, const int64_t* slots, int32_t tokens,
                          cudaStream_t stream) {
  AppendParams p;
  cudaError_t e = MakeParams(kv, k_new, v_new, stride, &p);
  if (e != cudaSuccess || tokens <= 0) return tokens < 0 ? cudaErrorInvalidValue : e;
  return LaunchOverlapped(AppendSlotsKernel, dim3(tokens * kv.num_kv_heads),
                          dim3((p.chunks + 31) / 32 * 32), 0, stream, p, slots);
}

}  // namespace hkv::kernels
