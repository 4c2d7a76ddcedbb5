#pragma once
// Options of a CudaWorker (workers/cuda/cuda_worker.h). Plain data, host only: the memory plan
// and the step layout read them in CPU-only builds too.

#include <atomic>
#include <cstdint>
#include <vector>

#include "absl/time/time.h"
#include "headkv/rank_assignment.h"

namespace hkv {

class NcclCommunicator;

// Tensor parallelism (Megatron: q/k/v and gate/up column-parallel, o and down row-parallel with
// one all-reduce each per layer). Rank `rank` owns slots [rank * H/size, (rank+1) * H/size) of
// every layer's KV heads; `placement` says which original head each slot holds (its
// head_of_slot empty: contiguous). Steps take the whole batch (rows of every KV head, global
// block ids) and use their own heads' rows.
struct CudaTensorParallel {
  int32_t rank = 0;
  int32_t size = 1;
  NcclCommunicator* comm = nullptr;  // Not owned; required when size > 1.
  HeadRankAssignment placement;
  absl::Duration step_timeout = absl::Minutes(5);  // A step longer than this aborts the group.
  // Set by another thread when a peer is known to be gone: the step in progress aborts the
  // group at once instead of waiting out step_timeout. Not owned; may be null.
  const std::atomic<bool>* cancel = nullptr;
};

// Output columns per warp (1, 2 or 4) of each fused decode product (kernels/gemv_fused.h).
// More columns share one norm prologue and input read; fewer give more CTAs per product.
struct FusedGemvCols {
  int32_t qkv = 2;
  int32_t o = 1;  // 1: 512 CTAs on Llama's 4096 outputs, one wave
  int32_t gate_up = 2;
  int32_t down = 1;
};

// Which prefill attention kernel the worker runs (kernels/prefill_attention.h).
//   kAuto: the kernels' own choice (wgmma on sm_90, else mma.sync; see PrefillKernel::kAuto).
//   kMmaSync: the mma.sync kernel (sm_80 and up), the reference.
//   kWgmma: the Hopper wgmma + TMA kernel wherever its checks pass for a step's chunk (16-byte
//     aligned pointers and strides), mma.sync for the rest; CudaWorker::Create refuses it on a
//     GPU that is not sm_90.
enum class CudaPrefillKernel : int8_t { kAuto, kMmaSync, kWgmma };

// kernels::kDefaultKvStages, without including the kernels here (static_assert in
// cuda_worker.cc).
inline constexpr int32_t kCudaDefaultDecodeKvStages = 2;

struct CudaWorkerOptions {
  int32_t device = 0;
  int32_t block_size = 16;
  int64_t num_blocks = 0;                          // 0: size the pool from free memory.
  double gpu_memory_utilization = 0.9;             // Share of total device memory hkv may use.
  int64_t activation_reserve_bytes = 512LL << 20;  // Kept free beyond the planned buffers.
  int32_t max_step_tokens = 8192;      // Tokens of the largest step (activations sized for it).
  int32_t max_seqs = 256;              // Sequences of the largest step (decode workspace).
  int32_t cuda_graph_max_batch = 256;  // Largest decode batch replayed as a graph; 0: eager.
  CudaTensorParallel tp;
  // The fused decode layers (workers/cuda/README.md): decode steps of 1-4 tokens on one GPU
  // run RmsNormGemv, GemvAddResidual and RmsNormGemvSwiGlu with the residual stream kept in
  // `res`. Off by default: on the H200 they gain 1.4% at one row, lose 3% at four, and give
  // other greedy tokens than the unfused path (bench/README.md); off, the worker launches
  // RmsNorm and Gemv/cuBLAS.
  bool fused_decode = false;
  FusedGemvCols fused_gemv_cols;  // read only when fused_decode is on
  // RoPE and the K/V writes of every step as one kernel (RopeKvAppend) with the other kernels
  // unfused: one launch a layer fewer, the same bits (kernels/rope.cuh). fused_decode implies
  // it; false launches Rope and AppendKvSlots (the A/B of bench/decode_step_profile).
  bool fused_rope_kv_append = true;
  // How decode attention brings K/V to the math (kernels::DecodePlanOptions::kv_stages): 0 =
  // loads into registers, 2..4 = a cp.async ring of that many iterations. Same results; the
  // A/B of bench/decode_step_profile.
  int32_t decode_kv_stages = kCudaDefaultDecodeKvStages;
  CudaPrefillKernel prefill_kernel = CudaPrefillKernel::kAuto;
};

}  // namespace hkv
