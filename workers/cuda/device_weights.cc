#include <cmath>
#include <initializer_list>

#include "common/status_macros.h"
#include "headkv/rank_assignment.h"
#include "kernels/init_ops.h"
#include "model/tensor_parallel.h"
#include "workers/cuda/cuda_worker_state.h"

namespace hkv {
namespace {

namespace k = ::hkv::kernels;
using cuda_internal::kDType;
using cuda_internal::LayerBuffers;
using cuda_internal::UploadBf16;

std::vector<float> Concat(std::initializer_list<const std::vector<float>*> parts) {
  std::vector<float> out;
  for (const auto* p : parts) out.insert(out.end(), p->begin(), p->end());
  return out;
}

}  // namespace

// Random weights made on the GPU, or the host weights (this rank's shard of them) uploaded.
absl::Status CudaWorker::State::LoadWeights() {
  if (model->device_dummy_seed.has_value()) return FillDummyWeights(*model->device_dummy_seed);
  const CudaTensorParallel& tp = options.tp;
  if (tp.size == 1) return UploadWeights(*model);
  const ModelConfig& global = model->config;
  if (!tp.placement.head_of_slot.empty()) {
    HKV_ASSIGN_OR_RETURN(Model shard, ShardModel(*model, tp.placement, tp.rank));
    return UploadWeights(shard);
  }
  HKV_ASSIGN_OR_RETURN(const HeadRankAssignment contiguous,
                       ContiguousAssignment(global.num_layers, global.num_kv_heads, tp.size));
  HKV_ASSIGN_OR_RETURN(Model shard, ShardModel(*model, contiguous, tp.rank));
  return UploadWeights(shard);
}

absl::Status CudaWorker::State::FillDummyWeights(uint64_t seed) {
  // Values depend only on (seed, tensor, element of the full matrix), so a tensor-parallel rank
  // writes exactly its shard of the unsharded model's weights.
  const ModelConfig& g = model->config;  // global shapes
  const int64_t dim = g.dim, hd = g.head_dim, grp = g.group_size();
  const int64_t q = g.q_size(), kv = g.kv_size(), ffn = g.hidden_dim;
  const int64_t hl = cfg.num_kv_heads, ql = cfg.q_size(), kvl = cfg.kv_size(), fl = cfg.hidden_dim;
  const int64_t f0 = static_cast<int64_t>(options.tp.rank) * fl;
  auto seed_of = [&](int64_t tensor) {
    return seed * 0x100000001B3ULL + static_cast<uint64_t>(tensor);
  };
  auto scale = [](int64_t fan_in) { return 1.0f / std::sqrt(static_cast<float>(fan_in)); };
  // out[r, c] = element (row0 + r, col0 + c) of logical tensor `tensor` of width cols_total.
  auto fill = [&](uint16_t* out, int64_t ld, int64_t rows, int64_t cols, int64_t row0, int64_t col0,
                  int64_t cols_total, int64_t tensor, float sc, float value) {
    return k::FillUniformMatrix(kDType, out, ld, rows, cols, row0, col0, cols_total,
                                seed_of(tensor), sc, value, stream);
  };
  HKV_RETURN_IF_ERROR(embedding.Reserve(static_cast<size_t>(g.vocab_size) * dim * 2));
  HKV_CUDA_RETURN_IF_ERROR(
      fill(embedding.get<uint16_t>(), dim, g.vocab_size, dim, 0, 0, dim, 1, 1.0f, 0.0f));
  HKV_RETURN_IF_ERROR(final_norm.Reserve(dim * 2));
  HKV_CUDA_RETURN_IF_ERROR(fill(final_norm.get<uint16_t>(), dim, 1, dim, 0, 0, dim, 2, 0, 1));
  if (!g.tie_embeddings) {
    HKV_RETURN_IF_ERROR(lm_head.Reserve(static_cast<size_t>(g.vocab_size) * dim * 2));
    HKV_CUDA_RETURN_IF_ERROR(
        fill(lm_head.get<uint16_t>(), dim, g.vocab_size, dim, 0, 0, dim, 3, scale(dim), 0.0f));
  }
  layers.resize(g.num_layers);
  for (int32_t l = 0; l < g.num_layers; ++l) {
    LayerBuffers& b = layers[l];
    const int64_t t = 16 + 16 * static_cast<int64_t>(l);  // this layer's tensor ids
    HKV_RETURN_IF_ERROR(b.attn_norm.Reserve(dim * 2));
    HKV_RETURN_IF_ERROR(b.ffn_norm.Reserve(dim * 2));
    HKV_RETURN_IF_ERROR(b.wqkv.Reserve((ql + 2 * kvl) * dim * 2));
    HKV_RETURN_IF_ERROR(b.wo.Reserve(dim * ql * 2));
    HKV_RETURN_IF_ERROR(b.w_gate_up.Reserve(2 * fl * dim * 2));
    HKV_RETURN_IF_ERROR(b.w_down.Reserve(dim * fl * 2));
    auto* qkv_base = b.wqkv.get<uint16_t>();
    auto* gu_base = b.w_gate_up.get<uint16_t>();
    HKV_CUDA_RETURN_IF_ERROR(fill(b.attn_norm.get<uint16_t>(), dim, 1, dim, 0, 0, dim, t, 0, 1));
    HKV_CUDA_RETURN_IF_ERROR(fill(b.ffn_norm.get<uint16_t>(), dim, 1, dim, 0, 0, dim, t + 1, 0, 1));
    for (int64_t j = 0; j < hl; ++j) {  // this rank's KV heads, in slot order
      const int64_t head = global_head[l * hl + j];
      // q/k/v rows (column-parallel) and o columns (row-parallel) of that head.
      HKV_CUDA_RETURN_IF_ERROR(fill(qkv_base + j * grp * hd * dim, dim, grp * hd, dim,
                                    head * grp * hd, 0, dim, t + 2, scale(dim), 0.0f));
      HKV_CUDA_RETURN_IF_ERROR(fill(qkv_base + (ql + j * hd) * dim, dim, hd, dim, head * hd, 0, dim,
                                    t + 3, scale(dim), 0.0f));
      HKV_CUDA_RETURN_IF_ERROR(fill(qkv_base + (ql + kvl + j * hd) * dim, dim, hd, dim, head * hd,
                                    0, dim, t + 4, scale(dim), 0.0f));
      HKV_CUDA_RETURN_IF_ERROR(fill(b.wo.get<uint16_t>() + j * grp * hd, ql, dim, grp * hd, 0,
                                    head * grp * hd, q, t + 5, scale(q), 0.0f));
    }
    (void)kv;
    HKV_CUDA_RETURN_IF_ERROR(fill(gu_base, dim, fl, dim, f0, 0, dim, t + 6, scale(dim), 0.0f));
    HKV_CUDA_RETURN_IF_ERROR(
        fill(gu_base + fl * dim, dim, fl, dim, f0, 0, dim, t + 7, scale(dim), 0.0f));
    HKV_CUDA_RETURN_IF_ERROR(
        fill(b.w_down.get<uint16_t>(), fl, dim, fl, 0, f0, ffn, t + 8, scale(ffn), 0.0f));
  }
  HKV_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream));
  return absl::OkStatus();
}

absl::Status CudaWorker::State::UploadWeights(const Model& m) {
  const ModelWeights& w = m.weights;
  const ModelConfig& c = m.config;
  if (static_cast<int32_t>(w.layers.size()) != c.num_layers || w.embedding.empty()) {
    return absl::InvalidArgumentError("the model's weights are missing");
  }
  HKV_RETURN_IF_ERROR(UploadBf16(w.embedding, &embedding));
  HKV_RETURN_IF_ERROR(UploadBf16(w.final_norm, &final_norm));
  if (!w.lm_head.empty()) HKV_RETURN_IF_ERROR(UploadBf16(w.lm_head, &lm_head));
  layers.resize(c.num_layers);
  for (int32_t l = 0; l < c.num_layers; ++l) {
    const LayerWeights& lw = w.layers[l];
    LayerBuffers& b = layers[l];
    HKV_RETURN_IF_ERROR(UploadBf16(lw.attn_norm, &b.attn_norm));
    HKV_RETURN_IF_ERROR(UploadBf16(Concat({&lw.wq, &lw.wk, &lw.wv}), &b.wqkv));
    HKV_RETURN_IF_ERROR(UploadBf16(lw.wo, &b.wo));
    HKV_RETURN_IF_ERROR(UploadBf16(lw.ffn_norm, &b.ffn_norm));
    HKV_RETURN_IF_ERROR(UploadBf16(Concat({&lw.w_gate, &lw.w_up}), &b.w_gate_up));
    HKV_RETURN_IF_ERROR(UploadBf16(lw.w_down, &b.w_down));
  }
  return absl::OkStatus();
}

}  // namespace hkv
