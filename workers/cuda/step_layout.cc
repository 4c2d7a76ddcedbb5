#include "workers/cuda/step_layout.h"

#include <algorithm>

#include "common/status_macros.h"
#include "headkv/selection.h"
#include "workers/sampler.h"

namespace hkv {
namespace {

// Row j (l * H + h) of batch sequence i: its blocks, from the batch's CSR or from the worker's
// tables (a delta step). Rows are addressed by (i, j), never by the flat row, so no division.
class RowBlocks {
 public:
  RowBlocks(const Batch& b, const StepRows& rows)
      : b_(b), rows_(rows), rows_per_seq_(static_cast<int64_t>(b.num_layers) * b.num_kv_heads) {}
  const BlockId* data(int64_t i, int64_t j) const {
    return rows_.seqs == nullptr ? b_.kv_indices.data() + b_.kv_indptr[i * rows_per_seq_ + j]
                                 : (*(*rows_.seqs)[i])[j].blocks.data();
  }
  int32_t size(int64_t i, int64_t j) const {
    if (rows_.seqs == nullptr) {
      const int64_t r = i * rows_per_seq_ + j;
      return b_.kv_indptr[r + 1] - b_.kv_indptr[r];
    }
    return static_cast<int32_t>((*(*rows_.seqs)[i])[j].blocks.size());
  }

 private:
  const Batch& b_;
  const StepRows& rows_;
  int64_t rows_per_seq_;
};

// Internal order: decodes, plain prefills, compressed prefills (batch order within each).
absl::Status OrderSequences(const Batch& b, HostStep& h) {
  for (int pass = 0; pass < 3; ++pass) {
    for (size_t i = 0; i < b.seqs.size(); ++i) {
      const SequenceStep& st = b.seqs[i];
      // A chunked compressed prefill's last chunk (start_pos > 0) is a plain prefill chunk.
      const bool one_step_select = st.select && st.start_pos == 0;
      const int kind = one_step_select ? 2 : (st.tokens.size() == 1 && !st.select ? 0 : 1);
      if (kind != pass) continue;
      h.order.push_back(static_cast<int32_t>(i));
      (kind == 0 ? h.num_decode : kind == 1 ? h.num_prefill : h.num_select)++;
    }
  }
  return absl::OkStatus();
}

// When the batch lists its sequences in internal order and every row holds exactly the
// blocks of its tokens (the usual case), the batch's index list is the step's as it is:
// staged straight from the batch instead of copied row by row (millions of entries at
// batch 256).
bool SharesIndices(const Batch& b, const HostStep& h, int32_t bs) {
  if (!b.kv_indptr.empty() && b.kv_indptr[0] != 0) return false;
  for (size_t k2 = 0; k2 < h.order.size(); ++k2) {
    if (h.order[k2] != static_cast<int32_t>(k2)) return false;
  }
  for (int64_t r = 0; r < b.num_rows(); ++r) {
    if (b.kv_indptr[r + 1] - b.kv_indptr[r] != (b.kv_len_after[r] + bs - 1) / bs) return false;
  }
  return true;
}

// Page tables of internal sequence k2's rows: after the step, and the paged prefix of plain
// prefill chunks.
absl::Status LayOutRows(const Batch& b, const RowBlocks& rows, int32_t bs, int32_t k2,
                        HostStep& h) {
  const SequenceStep& st = b.seqs[h.order[k2]];
  const int32_t T = static_cast<int32_t>(st.tokens.size());
  const bool is_prefill = k2 >= h.num_decode && k2 < h.num_decode + h.num_prefill;
  for (int64_t r = b.row(h.order[k2], 0, 0); r < b.row(h.order[k2] + 1, 0, 0); ++r) {
    const int64_t j = r - b.row(h.order[k2], 0, 0);
    const BlockId* blocks = rows.data(h.order[k2], j);
    const int32_t nblocks = rows.size(h.order[k2], j);
    const int32_t after = b.kv_len_after[r], before = b.kv_len_before[r];
    if (nblocks < 0 || after > nblocks * bs || before > after || before < 0) {
      return absl::InvalidArgumentError("a row holds too few blocks for its tokens");
    }
    const int32_t used_a = (after + bs - 1) / bs, used_b = (before + bs - 1) / bs;
    if (h.shared_indices) {
      h.indptr_a.push_back(b.kv_indptr[r + 1]);
    } else if (h.device_indices) {
      h.indptr_a.push_back(h.indptr_a.back() + used_a);
    } else {
      h.indices_a.insert(h.indices_a.end(), blocks, blocks + used_a);
      h.indptr_a.push_back(static_cast<int32_t>(h.indices_a.size()));
    }
    h.last_a.push_back(after == 0 ? 0 : after - (used_a - 1) * bs);
    if (is_prefill) {  // The paged prefix of plain prefill chunks (their rows only).
      h.indices_b.insert(h.indices_b.end(), blocks, blocks + used_b);
      h.indptr_b.push_back(static_cast<int32_t>(h.indices_b.size()));
      h.last_b.push_back(before == 0 ? 0 : before - (used_b - 1) * bs);
    }
    if ((!st.select || st.start_pos > 0) && after - before != T) {
      return absl::InvalidArgumentError("a plain row must grow by the step's tokens");
    }
  }
  return absl::OkStatus();
}

// Adaptive (adakv) selection of one compressed prefill: per layer the shared total and floor
// (headkv's AdaKvSplit), and the layer's reserved blocks appended to ada_blocks. Its caps are
// chosen on the device; h.caps holds zeros in their place.
absl::Status LayOutAdaptive(const SequenceStep& st, const StepLayoutShape& shape, HostStep& h) {
  const int32_t L = shape.num_layers, H = shape.num_kv_heads;
  const KvSelectionSpec& spec = st.selection;
  const std::vector<int32_t>& indptr = st.layer_block_indptr;
  if (static_cast<int32_t>(spec.layer_budget.size()) != L ||
      static_cast<int32_t>(indptr.size()) != L + 1 || indptr[0] != 0 ||
      indptr[L] != static_cast<int64_t>(st.layer_blocks.size())) {
    return absl::InvalidArgumentError("adaptive selection without a budget and blocks per layer");
  }
  if (!(spec.adaptive_floor_fraction >= 0.0f && spec.adaptive_floor_fraction <= 1.0f)) {
    return absl::InvalidArgumentError("adaptive floor fraction outside [0, 1]");
  }
  const int32_t past = static_cast<int32_t>(st.tokens.size()) - spec.window;
  h.caps.insert(h.caps.end(), static_cast<size_t>(L) * H, 0);
  const int32_t base = static_cast<int32_t>(h.ada_blocks.size());
  for (int32_t l = 0; l < L; ++l) {
    if (indptr[l + 1] < indptr[l]) {
      return absl::InvalidArgumentError("adaptive block reservation is not monotone");
    }
    const AdaKvShares shares =
        AdaKvSplit(spec.layer_budget[l], H, past, spec.adaptive_floor_fraction);
    h.ada_total.push_back(shares.total);
    h.ada_floor.push_back(shares.floor_cap);
    h.ada_block_start.push_back(base + indptr[l]);
  }
  h.ada_block_start.push_back(base + indptr[L]);
  h.ada_blocks.insert(h.ada_blocks.end(), st.layer_blocks.begin(), st.layer_blocks.end());
  return absl::OkStatus();
}

// Tokens, chunk offsets, selection caps and rows of internal sequence k2.
absl::Status LayOutSequence(const Batch& b, const RowBlocks& rows, const StepLayoutShape& shape,
                            int32_t k2, HostStep& h) {
  const SequenceStep& st = b.seqs[h.order[k2]];
  const int64_t rows_per_seq = static_cast<int64_t>(shape.num_layers) * shape.num_kv_heads;
  h.token_start.push_back(static_cast<int32_t>(h.ids.size()));
  for (size_t t = 0; t < st.tokens.size(); ++t) {
    if (st.tokens[t] == kPendingToken && st.tokens.size() == 1) {
      h.pending_at.push_back(static_cast<int32_t>(h.ids.size()));
      h.pending_of.push_back(h.order[k2]);
      h.ids.push_back(0);
      h.pos.push_back(st.start_pos);
      continue;
    }
    if (st.tokens[t] < 0 || st.tokens[t] >= shape.vocab_size) {
      return absl::InvalidArgumentError("token outside the vocabulary");
    }
    h.ids.push_back(st.tokens[t]);
    h.pos.push_back(st.start_pos + static_cast<int32_t>(t));
  }
  const int32_t T = static_cast<int32_t>(st.tokens.size());
  if (k2 >= h.num_decode && k2 < h.num_decode + h.num_prefill) {
    h.cu_prefill.push_back(h.cu_prefill.back() + T);
    h.max_prefill = std::max(h.max_prefill, T);
    if (st.select) {  // Its caps follow the one-step selects' (BuildHostStep).
      if (st.selection.window < 1 || st.selection.window > T) {
        return absl::InvalidArgumentError(
            "the last chunk of a compressed prefill lacks its window");
      }
      h.paged_select.push_back(k2);
      h.paged_select_len.push_back(st.start_pos + T);
      h.max_paged_select_len = std::max(h.max_paged_select_len, st.start_pos + T);
    }
  } else if (k2 >= h.num_decode + h.num_prefill) {
    h.cu_select.push_back(h.cu_select.back() + T);
    h.max_select = std::max(h.max_select, T);
    if (st.selection.window < 1 || st.selection.window > T) {
      return absl::InvalidArgumentError("selection window outside 1..prompt length");
    }
    if (st.selection.capacity.empty()) {
      HKV_RETURN_IF_ERROR(LayOutAdaptive(st, shape, h));
    } else {
      if (static_cast<int64_t>(st.selection.capacity.size()) != rows_per_seq) {
        return absl::InvalidArgumentError("selection capacity has the wrong size");
      }
      h.caps.insert(h.caps.end(), st.selection.capacity.begin(), st.selection.capacity.end());
      h.ada_total.insert(h.ada_total.end(), shape.num_layers, -1);
      h.ada_floor.insert(h.ada_floor.end(), shape.num_layers, 0);
      h.ada_block_start.insert(h.ada_block_start.end(), shape.num_layers + 1,
                               static_cast<int32_t>(h.ada_blocks.size()));
    }
  }
  return LayOutRows(b, rows, shape.block_size, k2, h);
}

// Padding decodes (graph steps): token 0 at position 0, empty rows, no KV writes.
void AppendPadding(const StepLayoutShape& shape, int32_t pad, HostStep& h) {
  const int64_t rows_per_seq = static_cast<int64_t>(shape.num_layers) * shape.num_kv_heads;
  for (int32_t p = 0; p < pad; ++p) {
    h.ids.push_back(0);
    h.pos.push_back(0);
    for (int64_t r = 0; r < rows_per_seq; ++r) {
      h.indptr_a.push_back(h.indptr_a.back());
      h.last_a.push_back(0);
    }
  }
}

// Slot of each plain token in each (layer, head): [L, plain_tokens, H]; -1 for padding.
// Compressed prefills' tokens, which come last, write no slot and get no entry (a 32k one-step
// prefill would otherwise fill and upload 67 MB of -1 at Llama-3-8B's shape).
void FillSlots(const Batch& b, const RowBlocks& rows, const StepLayoutShape& shape, HostStep& h) {
  const int32_t L = shape.num_layers, H = shape.num_kv_heads, bs = shape.block_size;
  const size_t plain = static_cast<size_t>(h.plain_tokens);
  h.slots.assign(static_cast<size_t>(L) * plain * H, -1);
  for (int32_t k2 = 0; k2 < h.real_decode + h.num_prefill; ++k2) {
    const int32_t bi = h.order[k2];
    const SequenceStep& st = b.seqs[bi];
    const int32_t ts = h.token_start[k2];
    for (int32_t l = 0; l < L; ++l) {
      for (int32_t hh = 0; hh < H; ++hh) {
        const int64_t r = b.row(bi, l, hh);
        const int64_t j = static_cast<int64_t>(l) * H + hh;
        const BlockId* blocks = rows.data(bi, j);
        // Each row's blocks sit in their own heap buffer for a delta step (the worker's tables):
        // fetch a few rows ahead so the misses overlap (65,536 rows at batch 256).
        constexpr int64_t kAhead = 8;
        if (j + kAhead < static_cast<int64_t>(L) * H) {
          __builtin_prefetch(rows.data(bi, j + kAhead) + b.kv_len_before[r + kAhead] / bs);
        }
        for (size_t t = 0; t < st.tokens.size(); ++t) {
          const int32_t slot = b.kv_len_before[r] + static_cast<int32_t>(t);
          h.slots[(static_cast<size_t>(l) * plain + ts + t) * H + hh] =
              static_cast<int64_t>(blocks[slot / bs]) * bs + slot % bs;
        }
      }
    }
  }
}

// Sampled rows: the last token of each sequence that asks for one (every padding row too).
// Tensor-parallel ranks other than 0 hold the same hidden state and sample nothing: only
// rank 0's tokens are used, so they skip the LM head (a 1 GB read per step on Llama-3-8B).
void FillSampleRows(const Batch& b, const StepLayoutShape& shape, HostStep& h) {
  const int32_t sampling_seqs = shape.tp_rank > 0 ? 0 : h.num_decode + h.num_prefill + h.num_select;
  for (int32_t k2 = 0; k2 < sampling_seqs; ++k2) {
    const bool padding = h.graph && k2 >= h.real_decode;
    if (padding) {
      h.sample_rows.push_back(HostSamplingRow{});
      h.sample_seq.push_back(-1);
      h.sample_index.push_back(0);
      h.sample_token.push_back(k2);
      continue;
    }
    const SequenceStep& st = b.seqs[h.order[k2]];  // padding exists only in graph steps
    if (!st.sample && !h.graph) continue;
    // n > 1 at the end of a prefill: one row per sample, each with its own seed.
    const int32_t samples = st.sample ? std::max(st.num_samples, 1) : 1;
    for (int32_t i = 0; i < samples; ++i) {
      HostSamplingRow row;
      row.temperature = st.sampling.temperature;
      row.top_k = st.sampling.top_k;
      row.top_p = st.sampling.top_p;
      row.uniform =
          static_cast<float>(SampleUniform(SampleSeed(st.sampling.seed, i), st.sample_step));
      row.min_p = st.sampling.min_p;
      h.sample_rows.push_back(row);
      h.sample_seq.push_back(st.sample ? k2 : -1);
      h.sample_index.push_back(i);
      h.sample_token.push_back(h.token_start[k2] + static_cast<int32_t>(st.tokens.size()) - 1);
    }
  }
}

}  // namespace

int32_t GraphBatchFor(int32_t num_seqs, int32_t max_batch) {
  for (int32_t s : kGraphBatchSizes) {
    if (s >= num_seqs) return s <= max_batch ? s : 0;
  }
  return 0;
}

absl::StatusOr<HostStep> BuildHostStep(const Batch& b, const StepLayoutShape& shape,
                                       int32_t graph_batch, const StepRows& step_rows) {
  if (step_rows.seqs != nullptr && step_rows.seqs->size() != b.seqs.size()) {
    return absl::InvalidArgumentError("the step's tables do not match its sequences");
  }
  const RowBlocks rows(b, step_rows);
  HostStep h;
  HKV_RETURN_IF_ERROR(OrderSequences(b, h));
  h.real_decode = h.num_decode;
  h.batch_indices = &b.kv_indices;
  h.graph = graph_batch > 0;
  const int32_t real_seqs = static_cast<int32_t>(h.order.size());
  const int32_t pad = h.graph ? graph_batch - h.num_decode : 0;
  h.shared_indices = step_rows.seqs == nullptr && SharesIndices(b, h, shape.block_size);
  h.device_indices = step_rows.seqs != nullptr && step_rows.device_builds_indices;
  h.indptr_a.push_back(0);
  h.indptr_b.push_back(0);
  h.cu_prefill.push_back(0);
  h.cu_select.push_back(0);
  for (int32_t k2 = 0; k2 < real_seqs; ++k2) {
    HKV_RETURN_IF_ERROR(LayOutSequence(b, rows, shape, k2, h));
    if (k2 + 1 == h.num_decode && pad > 0) AppendPadding(shape, pad, h);
  }
  if (h.graph) {
    // Graph steps are decode-only, so no real sequence follows the padding.
    for (int32_t p = 0; p < pad; ++p) h.token_start.push_back(h.real_decode + p);
    h.num_decode += pad;
  }
  for (size_t j = 0; j < h.paged_select.size(); ++j) {
    const KvSelectionSpec& spec = b.seqs[h.order[h.paged_select[j]]].selection;
    const int32_t L = shape.num_layers, H = shape.num_kv_heads;
    if (spec.capacity.empty()) {
      // adakv: the device splits each layer's budget over the whole prompt's scores; the
      // heads are compacted within their own rows (no reservation: the rows shrink after).
      if (static_cast<int32_t>(spec.layer_budget.size()) != L ||
          !(spec.adaptive_floor_fraction >= 0.0f && spec.adaptive_floor_fraction <= 1.0f)) {
        return absl::InvalidArgumentError("adaptive selection without a budget per layer");
      }
      const int32_t past = h.paged_select_len[j] - spec.window;
      h.caps.insert(h.caps.end(), static_cast<size_t>(L) * H, 0);
      for (int32_t l = 0; l < L; ++l) {
        const AdaKvShares shares =
            AdaKvSplit(spec.layer_budget[l], H, past, spec.adaptive_floor_fraction);
        h.paged_ada_total.push_back(shares.total);
        h.paged_ada_floor.push_back(shares.floor_cap);
      }
      continue;
    }
    if (static_cast<int64_t>(spec.capacity.size()) != int64_t{L} * H) {
      return absl::InvalidArgumentError("selection capacity has the wrong size");
    }
    h.caps.insert(h.caps.end(), spec.capacity.begin(), spec.capacity.end());
    h.paged_ada_total.insert(h.paged_ada_total.end(), L, -1);
    h.paged_ada_floor.insert(h.paged_ada_floor.end(), L, 0);
  }
  h.total = static_cast<int32_t>(h.ids.size());
  h.plain_tokens = h.total - h.cu_select.back();
  FillSlots(b, rows, shape, h);
  FillSampleRows(b, shape, h);
  return h;
}

}  // namespace hkv
