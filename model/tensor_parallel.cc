#include "model/tensor_parallel.h"

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace hkv {
namespace {

// Rows [begin, begin + count) of a row-major [rows, cols] matrix, appended to `out`.
void AppendRows(const std::vector<float>& m, int64_t cols, int64_t begin, int64_t count,
                std::vector<float>* out) {
  if (m.empty()) return;
  out->insert(out->end(), m.begin() + begin * cols, m.begin() + (begin + count) * cols);
}

// Columns [begin, begin + count) of every row of a row-major [rows, cols] matrix, appended to
// the rows of `out` (which must have `rows` rows of the columns gathered so far).
std::vector<float> GatherColumns(const std::vector<float>& m, int64_t rows, int64_t cols,
                                 const std::vector<std::pair<int64_t, int64_t>>& ranges) {
  int64_t width = 0;
  for (const auto& [b, n] : ranges) width += n;
  std::vector<float> out;
  out.reserve(rows * width);
  for (int64_t r = 0; r < rows; ++r) {
    for (const auto& [b, n] : ranges) {
      out.insert(out.end(), m.begin() + r * cols + b, m.begin() + r * cols + b + n);
    }
  }
  return out;
}

}  // namespace

absl::StatusOr<ModelConfig> ShardConfig(const ModelConfig& c, int32_t tp) {
  if (tp < 1 || c.num_kv_heads % tp != 0 || c.hidden_dim % tp != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tensor-parallel size ", tp, " must divide the ", c.num_kv_heads,
        " KV heads and the FFN width ", c.hidden_dim));
  }
  ModelConfig s = c;
  s.num_heads = c.num_heads / tp;
  s.num_kv_heads = c.num_kv_heads / tp;
  s.hidden_dim = c.hidden_dim / tp;
  return s;
}

absl::StatusOr<Model> ShardModel(const Model& model, const HeadRankAssignment& placement,
                                 int32_t rank) {
  const ModelConfig& c = model.config;
  const int32_t tp = placement.num_ranks;
  if (placement.num_heads != c.num_kv_heads || placement.num_layers != c.num_layers ||
      rank < 0 || rank >= tp) {
    return absl::InvalidArgumentError("the head placement does not match the model or rank");
  }
  Model out;
  HKV_ASSIGN_OR_RETURN(out.config, ShardConfig(c, tp));
  const ModelWeights& w = model.weights;
  out.weights.embedding = w.embedding;
  out.weights.final_norm = w.final_norm;
  out.weights.lm_head = w.lm_head;
  const int64_t d = c.head_dim, dim = c.dim, group = c.group_size();
  const int64_t per_rank = c.num_kv_heads / tp, f = c.hidden_dim / tp;
  for (int32_t l = 0; l < c.num_layers; ++l) {
    const LayerWeights& src = w.layers[l];
    LayerWeights dst;
    dst.attn_norm = src.attn_norm;
    dst.ffn_norm = src.ffn_norm;
    std::vector<std::pair<int64_t, int64_t>> o_columns;
    for (int64_t slot = rank * per_rank; slot < (rank + 1) * per_rank; ++slot) {
      const int64_t h = placement.head_of_slot[l * c.num_kv_heads + slot];
      AppendRows(src.wq, dim, h * group * d, group * d, &dst.wq);
      AppendRows(src.bq, 1, h * group * d, group * d, &dst.bq);
      AppendRows(src.wk, dim, h * d, d, &dst.wk);
      AppendRows(src.bk, 1, h * d, d, &dst.bk);
      AppendRows(src.wv, dim, h * d, d, &dst.wv);
      AppendRows(src.bv, 1, h * d, d, &dst.bv);
      o_columns.emplace_back(h * group * d, group * d);
    }
    dst.wo = GatherColumns(src.wo, dim, c.q_size(), o_columns);
    AppendRows(src.w_gate, dim, rank * f, f, &dst.w_gate);
    AppendRows(src.w_up, dim, rank * f, f, &dst.w_up);
    dst.w_down = GatherColumns(src.w_down, dim, c.hidden_dim, {{rank * f, f}});
    out.weights.layers.push_back(std::move(dst));
  }
  return out;
}

}  // namespace hkv
