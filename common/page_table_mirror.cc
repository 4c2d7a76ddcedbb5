#include "common/page_table_mirror.h"

#include "absl/strings/str_cat.h"
#include "common/logging.h"

namespace hkv {

absl::Status PageTableMirror::Apply(const PageTableDelta& d) {
  if (d.block_size < 1 || d.num_rows_per_seq < 1 ||
      (block_size_ != 0 && d.block_size != block_size_)) {
    return absl::DataLossError("page-table delta of another shape");
  }
  if (d.reset) seqs_.clear();
  block_size_ = d.block_size;
  for (RequestId id : d.dropped) seqs_.erase(id);
  for (const SequenceTableDelta& s : d.seqs) {
    const size_t changed = s.rows.size();
    if (s.keep.size() != changed || s.num_tokens.size() != changed ||
        s.tail_indptr.size() != changed + 1 || s.tail_indptr[0] != 0 ||
        s.tail_indptr.back() != static_cast<int64_t>(s.tail_blocks.size())) {
      return absl::DataLossError(absl::StrCat("malformed delta of sequence ", s.id));
    }
    auto it = seqs_.find(s.id);
    if (s.fresh) {
      it = seqs_.insert_or_assign(s.id, std::vector<BlockTable>(d.num_rows_per_seq)).first;
    } else if (it == seqs_.end()) {
      return absl::DataLossError(absl::StrCat("delta of unknown sequence ", s.id));
    }
    std::vector<BlockTable>& rows = it->second;
    if (static_cast<int32_t>(rows.size()) != d.num_rows_per_seq) {
      return absl::DataLossError("page-table delta of another shape");
    }
    for (size_t j = 0; j < changed; ++j) {
      const int32_t r = s.rows[j];
      if (r < 0 || r >= d.num_rows_per_seq || s.keep[j] < 0 ||
          s.keep[j] > static_cast<int32_t>(rows[r].blocks.size()) ||
          s.tail_indptr[j + 1] < s.tail_indptr[j]) {
        return absl::DataLossError(absl::StrCat("delta row ", r, " of sequence ", s.id));
      }
      BlockTable& t = rows[r];
      t.blocks.resize(s.keep[j]);
      t.blocks.insert(t.blocks.end(), s.tail_blocks.begin() + s.tail_indptr[j],
                      s.tail_blocks.begin() + s.tail_indptr[j + 1]);
      t.num_tokens = s.num_tokens[j];
    }
    // Rows that only grew must still fit their blocks (a lost delta shows here). One pass: the
    // growth, and the check of every row against its blocks (changed rows were set exactly).
    size_t c = 0;
    for (int32_t r = 0; r < d.num_rows_per_seq; ++r) {
      BlockTable& t = rows[r];
      if (c < changed && s.rows[c] == r) {
        ++c;
      } else {
        t.num_tokens += s.grow_all;
      }
      // blocks == ceil(tokens / block_size), without a division per row.
      const int64_t held = static_cast<int64_t>(t.blocks.size()) * block_size_;
      if (t.num_tokens < 0 || held < t.num_tokens || held - block_size_ >= t.num_tokens) {
        if (!(t.num_tokens == 0 && held == 0)) {
          return absl::DataLossError(absl::StrCat("sequence ", s.id, " lost a page-table change"));
        }
      }
    }
  }
  return absl::OkStatus();
}

const std::vector<BlockTable>& PageTableMirror::Rows(RequestId seq) const {
  auto it = seqs_.find(seq);
  HKV_CHECK(it != seqs_.end()) << "mirror holds no sequence " << seq;
  return it->second;
}

PageTableCsr PageTableMirror::Csr(absl::Span<const RequestId> seqs) const {
  PageTableCsr csr;
  csr.indptr.push_back(0);
  for (RequestId seq : seqs) {
    for (const BlockTable& t : Rows(seq)) {
      csr.indices.insert(csr.indices.end(), t.blocks.begin(), t.blocks.end());
      csr.indptr.push_back(static_cast<int32_t>(csr.indices.size()));
      csr.last_len.push_back(t.last_len(block_size_));
      csr.num_tokens.push_back(t.num_tokens);
    }
  }
  return csr;
}

absl::Status PageTableMirror::RowsOf(const Batch& b,
                                     std::vector<const std::vector<BlockTable>*>* rows) const {
  const int64_t rows_per_seq = static_cast<int64_t>(b.num_layers) * b.num_kv_heads;
  if (static_cast<int64_t>(b.kv_len_after.size()) != b.num_rows()) {
    return absl::DataLossError("row lengths do not match the batch");
  }
  rows->clear();
  rows->reserve(b.seqs.size());
  for (size_t i = 0; i < b.seqs.size(); ++i) {
    auto it = seqs_.find(b.seqs[i].id);
    if (it == seqs_.end() || static_cast<int64_t>(it->second.size()) != rows_per_seq) {
      return absl::DataLossError(
          absl::StrCat("the page tables hold no rows of sequence ", b.seqs[i].id));
    }
    const int32_t* after = b.kv_len_after.data() + i * rows_per_seq;
    for (int64_t r = 0; r < rows_per_seq; ++r) {
      if (it->second[r].num_tokens != after[r]) {
        return absl::DataLossError(absl::StrCat("sequence ", b.seqs[i].id, " row ", r, " holds ",
                                                it->second[r].num_tokens, " tokens, the step says ",
                                                after[r]));
      }
    }
    rows->push_back(&it->second);
  }
  return absl::OkStatus();
}

absl::Status PageTableMirror::FillBatchCsr(Batch* b) const {
  std::vector<const std::vector<BlockTable>*> rows;
  if (absl::Status s = RowsOf(*b, &rows); !s.ok()) return s;
  int64_t total = 0;
  for (const std::vector<BlockTable>* seq : rows) {
    for (const BlockTable& t : *seq) total += static_cast<int64_t>(t.blocks.size());
  }
  b->kv_indptr.clear();
  b->kv_indptr.reserve(b->num_rows() + 1);
  b->kv_indptr.push_back(0);
  b->kv_indices.clear();
  b->kv_indices.reserve(total);
  for (const std::vector<BlockTable>* seq : rows) {
    for (const BlockTable& t : *seq) {
      b->kv_indices.insert(b->kv_indices.end(), t.blocks.begin(), t.blocks.end());
      b->kv_indptr.push_back(static_cast<int32_t>(b->kv_indices.size()));
    }
  }
  return absl::OkStatus();
}

}  // namespace hkv
