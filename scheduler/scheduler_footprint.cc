// Scheduler: how many KV head-blocks a request can hold at once, for admission (Add) and for
// choosing between a chunked and a one-step compressed prefill.
#include <algorithm>

#include "scheduler/scheduler.h"

namespace hkv {
namespace {

int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace

bool Scheduler::ChunksCompressedPrefill(const Request& r) const {
  return r.compresses() && TransientBlocks(r) <= kv_->num_total_blocks();
}

int64_t Scheduler::TransientBlocks(const Request& r) const {
  return int64_t{kv_->num_rows_per_seq()} *
         CeilDiv(r.num_prompt_tokens(), kv_->config().block_size);
}

int64_t Scheduler::PeakBlocks(const Request& r) const {
  const int64_t one = SingleSamplePeak(r);
  if (r.sampling.n <= 1) return one;
  // Each other sample shares the prompt's full blocks and adds, per row, its copy of the
  // partial last block and its own max_tokens: at most its single peak less the full blocks.
  const int32_t bs = kv_->config().block_size;
  const int64_t m = std::max(r.sampling.max_tokens, 0);
  int64_t child = 0;
  if (!r.compresses()) {
    child = kv_->num_rows_per_seq() *
            (CeilDiv(r.num_prompt_tokens() + m, bs) - r.num_prompt_tokens() / bs);
  } else if (!r.plan.adaptive) {
    for (int32_t kept : r.plan.KeptTokens(r.num_prompt_tokens())) {
      child += CeilDiv(kept + m, bs) - kept / bs;
    }
  } else {
    child = one;  // Adaptive rows are known only after the prefill: bound by a whole sample.
  }
  return one + (r.sampling.n - 1) * child;
}

int64_t Scheduler::SingleSamplePeak(const Request& r) const {
  const int64_t n = r.num_prompt_tokens();
  const int64_t m = std::max(r.sampling.max_tokens, 0);
  const int32_t bs = kv_->config().block_size;
  const int64_t heads = kv_->config().num_kv_heads;
  if (!r.compresses()) return kv_->num_rows_per_seq() * CeilDiv(n + m, bs);
  // A chunked compressed prefill holds the prompt's full K/V until its last chunk.
  const int64_t transient = ChunksCompressedPrefill(r) ? TransientBlocks(r) : 0;
  int64_t peak = 0;
  if (!r.plan.adaptive) {
    for (int32_t kept : r.plan.KeptTokens(r.num_prompt_tokens())) peak += CeilDiv(kept + m, bs);
    return std::max(peak, transient);
  }
  // Adaptive: the prefill reserves a bound per layer; once committed, every row grows by m.
  // A layer keeping K tokens over H heads then holds at most (K + H * (m + bs - 1)) / bs blocks.
  int64_t reserved = 0;
  for (int32_t l = 0; l < r.plan.num_layers; ++l) {
    reserved += r.plan.MaxBlocksPerLayer(l, r.num_prompt_tokens(), bs);
    const int64_t kept = r.plan.LayerKeptBound(l, r.num_prompt_tokens());
    peak += std::min(heads * CeilDiv(n + m, bs), (kept + heads * (m + bs - 1)) / bs);
  }
  return std::max({reserved, peak, transient});
}

}  // namespace hkv
