#include "workers/cuda/memory_plan.h"

#include <cstdint>

#include "absl/strings/str_format.h"

namespace hkv {
namespace {

constexpr double kGiB = 1073741824.0;

}  // namespace

int64_t WeightBytes(const ModelConfig& c) {
  const int64_t dim = c.dim, qkv_w = c.q_size() + 2 * c.kv_size(), hidden = c.hidden_dim;
  int64_t elems = static_cast<int64_t>(c.vocab_size) * dim * (c.tie_embeddings ? 1 : 2) + dim;
  elems += static_cast<int64_t>(c.num_layers) *
           (2 * dim + qkv_w * dim + dim * c.q_size() + 3 * hidden * dim);
  return 2 * elems;
}

int64_t ActivationBytesPerToken(const ModelConfig& c) {
  const int64_t qkv_w = c.q_size() + 2 * c.kv_size();
  return 2 * (3 * static_cast<int64_t>(c.dim) + qkv_w + c.q_size() + 3 * c.hidden_dim);
}

int64_t StepBufferBytes(const ModelConfig& c, const CudaWorkerOptions& options) {
  return ActivationBytesPerToken(c) * options.max_step_tokens +
         static_cast<int64_t>(options.max_seqs) * (c.vocab_size * 4 + c.dim * 2 + 4);
}

int64_t KvBlockBytes(int32_t block_size, int32_t head_dim) {
  return 2LL * block_size * head_dim * 2;
}

absl::Status CheckModelFits(const ModelConfig& c, const CudaWorkerOptions& options,
                            int64_t free_bytes) {
  const int64_t weight_bytes = WeightBytes(c);
  const int64_t act_bytes = StepBufferBytes(c, options);
  const int64_t need = weight_bytes + act_bytes + options.activation_reserve_bytes;
  if (need <= free_bytes) return absl::OkStatus();
  return absl::ResourceExhaustedError(absl::StrFormat(
      "the model needs %.2f GiB of weights + %.2f GiB of activations (%d tokens a step) + "
      "%.2f GiB headroom but the GPU has %.2f GiB free: %.2f GiB short",
      weight_bytes / kGiB, act_bytes / kGiB, options.max_step_tokens,
      options.activation_reserve_bytes / kGiB, free_bytes / kGiB, (need - free_bytes) / kGiB));
}

absl::StatusOr<int64_t> KvPoolBlocks(const ModelConfig& c, const CudaWorkerOptions& options,
                                     int64_t total_bytes, int64_t in_use_bytes) {
  const int64_t bytes_per_block = KvBlockBytes(options.block_size, c.head_dim);
  const int64_t budget = static_cast<int64_t>(options.gpu_memory_utilization * total_bytes) -
                         in_use_bytes - options.activation_reserve_bytes;
  const int64_t blocks = options.num_blocks > 0 ? options.num_blocks : budget / bytes_per_block;
  if (blocks < 1 || blocks > INT32_MAX) {
    return absl::ResourceExhaustedError(absl::StrFormat(
        "no room for a KV pool: %.2f GiB total x %.2f utilization - %.2f GiB in use (weights "
        "and step buffers) - %.2f GiB headroom leaves %.2f GiB; raise "
        "--gpu-memory-utilization, lower --max-batch-tokens or use a smaller model",
        total_bytes / kGiB, options.gpu_memory_utilization, in_use_bytes / kGiB,
        options.activation_reserve_bytes / kGiB, budget / kGiB));
  }
  return blocks;
}

}  // namespace hkv
