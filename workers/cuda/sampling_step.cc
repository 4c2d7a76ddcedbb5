// The CUDA worker's sampling extras on the device: penalty lists in, penalised logits, and
// log-probabilities out. Eager steps only (see sampling_extras.h).

#include <cstring>

#include "common/status_macros.h"
#include "kernels/logits_processing.h"
#include "workers/cuda/cuda_worker_state.h"

namespace hkv {

namespace k = ::hkv::kernels;
using cuda_internal::kAlign;

namespace {

size_t Aligned(size_t bytes) { return (bytes + kAlign - 1) / kAlign * kAlign; }

}  // namespace

absl::Status CudaWorker::State::StageExtras(const SamplingExtras& x) {
  static_assert(sizeof(HostPenaltyRow) == sizeof(k::PenaltyRow));
  extras = cuda_internal::DeviceExtras{};
  extras.top = x.top;
  if (!x.penalties) return absl::OkStatus();
  // One pinned copy: [params][indptr][ids][counts], each slice aligned.
  const size_t p_bytes = Aligned(x.params.size() * sizeof(HostPenaltyRow));
  const size_t i_bytes = Aligned(x.indptr.size() * 4);
  const size_t n_bytes = Aligned(std::max<size_t>(x.ids.size(), 1) * 4);
  const size_t total = p_bytes + i_bytes + 2 * n_bytes;
  HKV_RETURN_IF_ERROR(extras_host.Reserve(total));
  HKV_RETURN_IF_ERROR(extras_dev.Reserve(total));
  char* host = extras_host.get();
  std::memcpy(host, x.params.data(), x.params.size() * sizeof(HostPenaltyRow));
  std::memcpy(host + p_bytes, x.indptr.data(), x.indptr.size() * 4);
  std::memcpy(host + p_bytes + i_bytes, x.ids.data(), x.ids.size() * 4);
  std::memcpy(host + p_bytes + i_bytes + n_bytes, x.counts.data(), x.counts.size() * 4);
  HKV_CUDA_RETURN_IF_ERROR(
      cudaMemcpyAsync(extras_dev.get(), host, total, cudaMemcpyHostToDevice, stream));
  char* dev = extras_dev.get<char>();
  extras.penalties = true;
  extras.params = reinterpret_cast<const k::PenaltyRow*>(dev);
  extras.indptr = reinterpret_cast<const int32_t*>(dev + p_bytes);
  extras.ids = reinterpret_cast<const int32_t*>(dev + p_bytes + i_bytes);
  extras.counts = reinterpret_cast<const int32_t*>(dev + p_bytes + i_bytes + n_bytes);
  return absl::OkStatus();
}

// The raw logits stay as they are for the logprobs: the penalties apply to a copy.
absl::StatusOr<const float*> CudaWorker::State::PenalisedLogits(int32_t rows) {
  if (!extras.penalties) return logits.get<float>();
  const size_t bytes = static_cast<size_t>(rows) * cfg.vocab_size * 4;
  HKV_RETURN_IF_ERROR(penalised.Reserve(bytes));
  HKV_CUDA_RETURN_IF_ERROR(
      cudaMemcpyAsync(penalised.get(), logits.get(), bytes, cudaMemcpyDeviceToDevice, stream));
  HKV_CUDA_RETURN_IF_ERROR(k::ApplyPenalties(penalised.get<float>(), cfg.vocab_size, rows,
                                             cfg.vocab_size, extras.params, extras.indptr,
                                             extras.ids, extras.counts, stream));
  return penalised.get<float>();
}

size_t CudaWorker::State::LogprobBytes(int32_t rows) const {
  if (extras.top < 0) return 0;
  return static_cast<size_t>(rows) * (1 + 2 * static_cast<size_t>(extras.top)) * 4;
}

absl::Status CudaWorker::State::RunLogprobs(int32_t rows) {
  if (extras.top < 0 || rows == 0) return absl::OkStatus();
  HKV_RETURN_IF_ERROR(logprob_out.Reserve(LogprobBytes(rows)));
  float* lp = logprob_out.get<float>();
  auto* top_ids = reinterpret_cast<int32_t*>(lp + rows);
  float* top_lp = reinterpret_cast<float*>(top_ids + static_cast<size_t>(rows) * extras.top);
  HKV_CUDA_RETURN_IF_ERROR(k::ComputeLogprobs(logits.get<float>(), cfg.vocab_size, rows,
                                              cfg.vocab_size, tokens.get<int32_t>(), extras.top, lp,
                                              top_ids, top_lp, stream));
  return absl::OkStatus();
}

// `out`: LogprobBytes(rows) copied from logprob_out.
void CudaWorker::State::UnpackLogprobs(const Batch& b, const HostStep& h, const char* out,
                                       int32_t slot, int32_t top, BatchResult* result) const {
  if (top < 0) return;
  const size_t rows = h.sample_rows.size();
  const auto* lp = reinterpret_cast<const float*>(out);
  const auto* top_ids = reinterpret_cast<const int32_t*>(lp + rows);
  const auto* top_lp = reinterpret_cast<const float*>(top_ids + rows * top);
  const auto* tokens_out = reinterpret_cast<const int32_t*>(host_out[slot].get());
  for (size_t r = 0; r < rows; ++r) {
    if (h.sample_seq[r] < 0) continue;
    const int32_t bi = h.order[h.sample_seq[r]];
    const SequenceStep& st = b.seqs[bi];
    if (!st.sample || st.sampling.logprobs < 0) continue;
    TokenLogprobs l;
    l.token = tokens_out[r];
    l.logprob = lp[r];
    for (int32_t j = 0; j < st.sampling.logprobs && j < top; ++j) {
      l.top_ids.push_back(top_ids[r * top + j]);
      l.top_logprobs.push_back(top_lp[r * top + j]);
    }
    result->seqs[bi].logprobs.push_back(std::move(l));
  }
}

}  // namespace hkv
