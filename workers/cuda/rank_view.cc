#include "workers/cuda/rank_view.h"

#include "absl/strings/str_cat.h"
#include "common/batch_validation.h"
#include "common/status_macros.h"

namespace hkv {
namespace {

// Selection caps of the rank's heads, [L * hl] from [L * hg].
absl::Status SliceCaps(const RankSlice& s, int32_t hl, std::vector<SequenceStep>& seqs) {
  const int32_t L = s.num_layers, hg = s.global_kv_heads;
  for (SequenceStep& st : seqs) {
    if (st.select && st.selection.capacity.empty()) {
      // Adaptive (adakv) selection splits a layer's budget over all its heads, which one rank
      // does not hold (SupportsAdaptiveSelection is false under tensor parallelism).
      return absl::InvalidArgumentError("adaptive selection cannot be split across ranks");
    }
    if (st.selection.capacity.empty()) continue;
    if (static_cast<int64_t>(st.selection.capacity.size()) != int64_t{L} * hg) {
      return absl::InvalidArgumentError("selection capacity has the wrong size");
    }
    std::vector<int32_t> local(static_cast<size_t>(L) * hl);
    for (int32_t l = 0; l < L; ++l) {
      for (int32_t j = 0; j < hl; ++j) {
        local[l * hl + j] = st.selection.capacity[l * hg + (*s.global_head)[l * hl + j]];
      }
    }
    st.selection.capacity = std::move(local);
  }
  return absl::OkStatus();
}

// Rows of the rank's heads, with block ids of its pool.
absl::Status SliceRows(const Batch& g, const RankSlice& s, int32_t hl, Batch& out) {
  const int64_t rows = out.num_rows();
  out.kv_indptr.assign(1, 0);
  out.kv_indptr.reserve(rows + 1);
  out.kv_len_before.reserve(rows);
  out.kv_len_after.reserve(rows);
  out.kv_indices.clear();
  for (size_t i = 0; i < g.seqs.size(); ++i) {
    for (int32_t l = 0; l < s.num_layers; ++l) {
      for (int32_t j = 0; j < hl; ++j) {
        const int64_t r = g.row(static_cast<int64_t>(i), l, (*s.global_head)[l * hl + j]);
        for (int32_t k = g.kv_indptr[r]; k < g.kv_indptr[r + 1]; ++k) {
          const int64_t id = g.kv_indices[k] - s.block_first;
          if (id < 0 || id >= s.num_blocks) {
            return absl::InvalidArgumentError(
                absl::StrCat("block ", g.kv_indices[k], " is outside rank ", s.rank, "'s pool"));
          }
          out.kv_indices.push_back(static_cast<BlockId>(id));
        }
        out.kv_indptr.push_back(static_cast<int32_t>(out.kv_indices.size()));
        out.kv_len_before.push_back(g.kv_len_before[r]);
        out.kv_len_after.push_back(g.kv_len_after[r]);
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<Batch> RankView(const Batch& g, const RankSlice& s) {
  const int32_t L = s.num_layers;
  const int32_t hl = L > 0 ? static_cast<int32_t>(s.global_head->size() / L) : 0;
  if (g.num_layers != L || g.num_kv_heads != s.global_kv_heads) {
    return absl::InvalidArgumentError("malformed batch for a tensor-parallel rank");
  }
  HKV_RETURN_IF_ERROR(ValidateBatchShape(g));
  Batch out;
  out.num_layers = L;
  out.num_kv_heads = hl;
  out.block_size = g.block_size;
  out.seqs = g.seqs;
  out.forks = g.forks;  // Per-sequence sampling state is the same on every rank.
  out.released = g.released;
  HKV_RETURN_IF_ERROR(SliceCaps(s, hl, out.seqs));
  HKV_RETURN_IF_ERROR(SliceRows(g, s, hl, out));
  for (const auto& [src, dst] : g.block_copies) {
    if (src < s.block_first || src >= s.block_first + s.num_blocks) continue;  // another rank's
    out.block_copies.emplace_back(static_cast<BlockId>(src - s.block_first),
                                  static_cast<BlockId>(dst - s.block_first));
  }
  return out;
}

}  // namespace hkv
