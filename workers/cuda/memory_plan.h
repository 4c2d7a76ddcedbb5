#pragma once
// The CUDA worker's memory arithmetic, host only (no CUDA call: the caller reads free and total
// memory from the device and passes them in), so CPU-only builds test it.
//
//   device memory:  | weights | step buffers | headroom | KV pool ........ | other |
//                   '------- in use --------'            '- budget -'
//   budget = utilization * total - in use (after weights and buffers) - headroom
//
// Pure functions; thread-safe.

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "model/model_config.h"
#include "workers/cuda/cuda_worker_options.h"

namespace hkv {

// Bytes of the bf16 weights of `config` (one rank's shapes under tensor parallelism).
int64_t WeightBytes(const ModelConfig& config);

// Activation bytes per token of a step (bf16).
int64_t ActivationBytesPerToken(const ModelConfig& config);

// Bytes of the step buffers planned at start-up: activations for `max_step_tokens` tokens and
// logits, sample rows and tokens for `max_seqs` sequences.
int64_t StepBufferBytes(const ModelConfig& config, const CudaWorkerOptions& options);

// Bytes of one KV block: K and V of `block_size` bf16 tokens of one head.
int64_t KvBlockBytes(int32_t block_size, int32_t head_dim);

// OK when weights, step buffers and headroom fit in `free_bytes`; RESOURCE_EXHAUSTED saying by
// how much they do not.
absl::Status CheckModelFits(const ModelConfig& config, const CudaWorkerOptions& options,
                            int64_t free_bytes);

// Blocks of the KV pool the utilization target leaves once `in_use_bytes` of `total_bytes`
// are taken (weights and step buffers): options.num_blocks when set, else the budget over
// KvBlockBytes. RESOURCE_EXHAUSTED when not even one block fits or the count passes INT32_MAX.
absl::StatusOr<int64_t> KvPoolBlocks(const ModelConfig& config, const CudaWorkerOptions& options,
                                     int64_t total_bytes, int64_t in_use_bytes);

}  // namespace hkv
