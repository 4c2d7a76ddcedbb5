// CudaWorker's attention probes (SequenceStep::probe_*, kernels/attention_probe.h): which
// decode sequences of a step are probed, the kernel per layer after decode attention, and the
// download of the top positions into SequenceResult::probe_*. Probe steps always run eagerly
// (LayOut gives them no graph), so decode graphs never change.

#include <algorithm>
#include <cmath>

#include "kernels/attention_probe.h"
#include "workers/cuda/cuda_worker_state.h"

namespace hkv {

namespace k = ::hkv::kernels;
static_assert(k::kMaxProbeTopN == ::hkv::kMaxProbeTopN,
              "the kernel serves every probe a batch asks");

// Picks the probed decodes of `b` and uploads their parameters; clears the plan otherwise.
absl::Status CudaWorker::State::PlanProbes(const Batch& b, const HostStep& h) {
  cuda_internal::ProbePlan& p = probe;
  p = cuda_internal::ProbePlan();
  for (int32_t k2 = 0; k2 < h.real_decode; ++k2) {
    const SequenceStep& st = b.seqs[h.order[k2]];
    if (st.probe_top_n <= 0) continue;
    p.batch_index.push_back(h.order[k2]);
    p.meta.push_back(h.token_start[k2]);  // q row
    p.meta.push_back(k2);                 // internal sequence of its CSR rows
    p.meta.push_back(st.probe_prompt_len);
    p.meta.push_back(std::min(st.probe_top_n, st.probe_prompt_len));
    p.max_len = std::max(p.max_len, st.start_pos + 1);
    p.max_top_n = std::max(p.max_top_n, std::min(st.probe_top_n, st.probe_prompt_len));
  }
  const size_t n = p.batch_index.size();
  if (n == 0) return absl::OkStatus();
  if (options.tp.size > 1) {
    return absl::UnimplementedError("attention probes need one GPU (tensor_parallel_size 1)");
  }
  const size_t out = static_cast<size_t>(cfg.num_layers) * n * cfg.num_heads * p.max_top_n;
  HKV_RETURN_IF_ERROR(probe_meta.Reserve(p.meta.size() * 4));
  HKV_RETURN_IF_ERROR(
      probe_ws.Reserve(k::AttentionProbeWorkspaceBytes(n, cfg.num_heads, p.max_len)));
  HKV_RETURN_IF_ERROR(probe_pos.Reserve(out * 4));
  HKV_RETURN_IF_ERROR(probe_w.Reserve(out * 4));
  HKV_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(probe_meta.get(), p.meta.data(), p.meta.size() * 4,
                                           cudaMemcpyHostToDevice, stream));
  return absl::OkStatus();
}

// Layer l's probes over the page table after the step (the probed token's K/V included).
absl::Status CudaWorker::State::RunProbes(int32_t l, const k::PagedKvView& after) {
  const cuda_internal::ProbePlan& p = probe;
  const int32_t n = static_cast<int32_t>(p.batch_index.size());
  if (n == 0) return absl::OkStatus();
  const int32_t H = cfg.num_kv_heads;
  const size_t per_layer = static_cast<size_t>(n) * cfg.num_heads * p.max_top_n;
  k::AttentionProbeArgs a;
  a.dtype = cuda_internal::kDType;
  a.q = qkv.get();
  a.q_row_stride = cfg.q_size() + 2 * cfg.kv_size();
  a.kv = after;
  a.kv.row_offset = l * H;             // after's rows are (seq, layer, kv_head)
  a.meta = probe_meta.get<int32_t>();  // [n, 4]: see PlanProbes
  a.num_probes = n;
  a.num_q_heads = cfg.num_heads;
  a.max_len = p.max_len;
  a.max_top_n = p.max_top_n;
  a.scale = 1.0f / std::sqrt(static_cast<float>(cfg.head_dim));
  a.logits = probe_ws.get<float>();
  a.positions = probe_pos.get<int32_t>() + l * per_layer;
  a.weights = probe_w.get<float>() + l * per_layer;
  HKV_CUDA_RETURN_IF_ERROR(k::RunAttentionProbe(a, stream));
  return absl::OkStatus();
}

// Downloads the probes (after the step's sync) into their sequences' results.
absl::Status CudaWorker::State::UnpackProbes(BatchResult* result) {
  const cuda_internal::ProbePlan& p = probe;
  const size_t n = p.batch_index.size();
  if (n == 0) return absl::OkStatus();
  const int32_t L = cfg.num_layers, Hq = cfg.num_heads, top = p.max_top_n;
  const size_t out = static_cast<size_t>(L) * n * Hq * top;
  std::vector<int32_t> pos(out);
  std::vector<float> w(out);
  HKV_CUDA_RETURN_IF_ERROR(
      cudaMemcpy(pos.data(), probe_pos.get(), out * 4, cudaMemcpyDeviceToHost));
  HKV_CUDA_RETURN_IF_ERROR(cudaMemcpy(w.data(), probe_w.get(), out * 4, cudaMemcpyDeviceToHost));
  for (size_t i = 0; i < n; ++i) {
    const int32_t k_i = p.meta[4 * i + 3];
    SequenceResult& r = result->seqs[p.batch_index[i]];
    r.probe_positions.resize(static_cast<size_t>(L) * Hq * k_i);
    r.probe_weights.resize(r.probe_positions.size());
    for (int32_t l = 0; l < L; ++l) {
      for (int32_t h = 0; h < Hq; ++h) {
        const size_t src = ((static_cast<size_t>(l) * n + i) * Hq + h) * top;
        const size_t dst = (static_cast<size_t>(l) * Hq + h) * k_i;
        std::copy_n(&pos[src], k_i, &r.probe_positions[dst]);
        std::copy_n(&w[src], k_i, &r.probe_weights[dst]);
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace hkv
