#include "common/batch_validation.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace hkv {
namespace {

template <typename... Parts>
absl::Status Malformed(const Parts&... parts) {
  return absl::InvalidArgumentError(absl::StrCat("malformed batch: ", parts...));
}

// A delta's shape and sequences match the batch (its contents are the receiver's to check).
absl::Status ValidateDelta(const Batch& b) {
  const PageTableDelta& d = *b.kv_delta;
  if (d.num_rows_per_seq != static_cast<int64_t>(b.num_layers) * b.num_kv_heads ||
      d.block_size != b.block_size || d.seqs.size() != b.seqs.size()) {
    return Malformed("page-table delta does not match the batch's shape");
  }
  for (size_t i = 0; i < b.seqs.size(); ++i) {
    if (d.seqs[i].id != b.seqs[i].id) {
      return Malformed("page-table delta lists sequence ", d.seqs[i].id, " where the batch has ",
                       b.seqs[i].id);
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status ValidatePageTable(const Batch& b) {
  if (b.num_layers < 0 || b.num_kv_heads < 0) {
    return Malformed("shape ", b.num_layers, "x", b.num_kv_heads);
  }
  if (b.kv_delta.has_value()) {
    if (absl::Status s = ValidateDelta(b); !s.ok()) return s;
    if (b.kv_indptr.empty() && b.kv_indices.empty()) return absl::OkStatus();  // delta only
  }
  const int64_t rows = b.num_rows();
  if (static_cast<int64_t>(b.kv_indptr.size()) != rows + 1 || b.kv_indptr[0] != 0 ||
      b.kv_indptr.back() != static_cast<int64_t>(b.kv_indices.size())) {
    return Malformed("page table does not match ", rows, " rows");
  }
  for (int64_t r = 0; r < rows; ++r) {
    if (b.kv_indptr[r] > b.kv_indptr[r + 1]) return Malformed("kv_indptr decreases at row ", r);
  }
  return absl::OkStatus();
}

absl::Status ValidateBatchShape(const Batch& b) {
  if (absl::Status s = ValidatePageTable(b); !s.ok()) return s;
  const int64_t rows = b.num_rows();
  if (static_cast<int64_t>(b.kv_len_before.size()) != rows ||
      static_cast<int64_t>(b.kv_len_after.size()) != rows) {
    return Malformed("row lengths do not match ", rows, " rows");
  }
  return absl::OkStatus();
}

absl::Status ValidateRowLengths(const Batch& b) {
  if (b.block_size <= 0) return Malformed("block_size ", b.block_size);
  if (static_cast<int64_t>(b.kv_indptr.size()) != b.num_rows() + 1) {
    return Malformed("row lengths checked without the rows' blocks");
  }
  for (int64_t r = 0; r < b.num_rows(); ++r) {
    const int64_t blocks = b.kv_indptr[r + 1] - b.kv_indptr[r];
    if (b.kv_len_before[r] < 0 || b.kv_len_after[r] < b.kv_len_before[r] ||
        b.kv_len_after[r] > blocks * b.block_size) {
      return Malformed("row ", r, " holds ", blocks, " blocks for ", b.kv_len_after[r], " tokens");
    }
  }
  return absl::OkStatus();
}

absl::Status ValidateProbes(const Batch& b) {
  const int64_t rows_per_seq = static_cast<int64_t>(b.num_layers) * b.num_kv_heads;
  for (size_t i = 0; i < b.seqs.size(); ++i) {
    const SequenceStep& s = b.seqs[i];
    if (s.probe_top_n == 0) continue;
    if (s.probe_top_n < 0 || s.probe_top_n > kMaxProbeTopN) {
      return Malformed("sequence ", s.id, " asks probe_top_n ", s.probe_top_n, " outside [1, ",
                       kMaxProbeTopN, "]");
    }
    if (s.tokens.size() != 1 || s.select) {
      return Malformed("sequence ", s.id, " probes attention on a step that is not one decode");
    }
    if (s.probe_prompt_len < 1 || s.probe_prompt_len > s.start_pos + 1) {
      return Malformed("sequence ", s.id, " probes ", s.probe_prompt_len,
                       " prompt positions at position ", s.start_pos);
    }
    for (int64_t r = i * rows_per_seq; r < (i + 1) * rows_per_seq; ++r) {
      if (b.kv_len_before[r] != s.start_pos || b.kv_len_after[r] != s.start_pos + 1) {
        return Malformed("sequence ", s.id, " probes attention over a compressed row ", r);
      }
    }
  }
  return absl::OkStatus();
}

absl::Status ValidateBlockIds(const Batch& b, int64_t num_blocks) {
  BlockId lo = 0, hi = 0;  // min/max: a loop the compiler vectorizes (millions of ids)
  for (BlockId id : b.kv_indices) {
    lo = std::min(lo, id);
    hi = std::max(hi, id);
  }
  if (lo < 0) return Malformed("block id ", lo, " outside the pool");
  if (!b.kv_indices.empty() && hi >= num_blocks) {
    return Malformed("block id ", hi, " outside the pool of ", num_blocks);
  }
  if (b.kv_delta.has_value()) {  // the blocks a delta adds (the receiver holds the others)
    for (const SequenceTableDelta& s : b.kv_delta->seqs) {
      for (BlockId id : s.tail_blocks) {
        if (id < 0 || id >= num_blocks) return Malformed("block id ", id, " outside the pool");
      }
    }
  }
  for (const SequenceStep& st : b.seqs) {  // adaptive reservations (SequenceStep::layer_blocks)
    for (BlockId id : st.layer_blocks) {
      if (id < 0 || id >= num_blocks) {
        return Malformed("reserved block id ", id, " outside the pool");
      }
    }
  }
  for (const auto& [src, dst] : b.block_copies) {
    if (src < 0 || src >= num_blocks || dst < 0 || dst >= num_blocks) {
      return Malformed("block copy ", src, " -> ", dst, " outside the pool");
    }
  }
  return absl::OkStatus();
}

}  // namespace hkv
