#include "workers/cuda/device_page_table.h"

#include <algorithm>

namespace hkv {
namespace {

// Appends copies to a segment list, extending the last segment when the copy continues it and
// cutting runs at kMaxTableSegment.
class SegmentList {
 public:
  SegmentList(std::vector<int32_t>* segments, std::vector<int32_t>* upload)
      : segs_(segments), upload_(upload) {}
  void Copy(int64_t dst, int64_t src, int64_t count, int32_t from_upload) {
    while (count > 0) {
      int64_t n = 0;
      const size_t k = segs_->size();
      if (k > 0 && (*segs_)[k - 1] == from_upload && (*segs_)[k - 4] + (*segs_)[k - 2] == dst &&
          (*segs_)[k - 3] + (*segs_)[k - 2] == src && (*segs_)[k - 2] < kMaxTableSegment) {
        n = std::min<int64_t>(count, kMaxTableSegment - (*segs_)[k - 2]);
        (*segs_)[k - 2] += static_cast<int32_t>(n);
      } else {
        n = std::min<int64_t>(count, kMaxTableSegment);
        segs_->insert(segs_->end(), {static_cast<int32_t>(dst), static_cast<int32_t>(src),
                                     static_cast<int32_t>(n), from_upload});
      }
      dst += n;
      src += n;
      count -= n;
    }
  }
  void Upload(int64_t dst, const BlockId* blocks, int64_t count) {
    if (count <= 0) return;
    const int64_t src = static_cast<int64_t>(upload_->size());
    upload_->insert(upload_->end(), blocks, blocks + count);
    Copy(dst, src, count, 1);
  }
  // Where the lists stand, to undo a sequence's segments.
  std::pair<size_t, size_t> Mark() const { return {segs_->size(), upload_->size()}; }
  void Undo(std::pair<size_t, size_t> mark) {
    segs_->resize(mark.first);
    upload_->resize(mark.second);
  }

 private:
  std::vector<int32_t>* segs_;
  std::vector<int32_t>* upload_;
};

// Copies from the last table the rows of a sequence it holds (first row `p` there, `r` in h);
// false when the last table does not fit the delta (the caller uploads the sequence instead).
bool CopyFromLast(const SequenceTableDelta& s, const std::vector<BlockTable>& rows,
                  const DeviceTableState& last, int64_t p, int64_t r, const HostStep& h,
                  SegmentList& out) {
  const int32_t rows_per_seq = static_cast<int32_t>(rows.size());
  if (p + rows_per_seq >= static_cast<int64_t>(last.indptr.size())) return false;
  const int32_t* was = last.indptr.data() + p;
  const int32_t* now = h.indptr_a.data() + r;
  size_t c = 0;
  for (int32_t j = 0; j < rows_per_seq;) {
    if (c < s.rows.size() && s.rows[c] == j) {  // a changed row: its kept head, then the rest
      const int32_t keep = s.keep[c++];
      if (keep < 0 || keep > was[j + 1] - was[j] || keep > now[j + 1] - now[j]) return false;
      out.Copy(now[j], was[j], keep, 0);
      out.Upload(now[j] + keep, rows[j].blocks.data() + keep, now[j + 1] - now[j] - keep);
      ++j;
      continue;
    }
    const int32_t end = c < s.rows.size() ? std::min(s.rows[c], rows_per_seq) : rows_per_seq;
    if (end <= j) return false;  // delta rows out of order
    if (was[end] - was[j] != now[end] - now[j]) return false;
    out.Copy(now[j], was[j], now[end] - now[j], 0);
    j = end;
  }
  return c == s.rows.size();
}

}  // namespace

void PlanTableGather(const Batch& b, const std::vector<const std::vector<BlockTable>*>& rows,
                     const DeviceTableState& last, HostStep* h) {
  h->gather_segments.clear();
  h->gather_upload.clear();
  SegmentList out(&h->gather_segments, &h->gather_upload);
  const int64_t rows_per_seq = static_cast<int64_t>(b.num_layers) * b.num_kv_heads;
  for (size_t k2 = 0; k2 < h->order.size(); ++k2) {
    const int32_t bi = h->order[k2];
    const SequenceTableDelta& s = b.kv_delta->seqs[bi];
    const std::vector<BlockTable>& seq_rows = *rows[bi];
    const int64_t r = h->first_row(static_cast<int32_t>(k2), rows_per_seq);
    if (last.valid && !s.fresh) {
      auto it = last.first_row.find(s.id);
      if (it != last.first_row.end()) {
        const auto mark = out.Mark();
        if (CopyFromLast(s, seq_rows, last, it->second, r, *h, out)) continue;
        out.Undo(mark);
      }
    }
    for (int64_t j = 0; j < rows_per_seq; ++j) {  // the whole sequence from the upload
      const std::vector<BlockId>& blocks = seq_rows[j].blocks;
      out.Upload(h->indptr_a[r + j], blocks.data(), h->indptr_a[r + j + 1] - h->indptr_a[r + j]);
    }
  }
}

void RecordDeviceTable(const Batch& b, const HostStep& h, DeviceTableState* state) {
  const int64_t rows_per_seq = static_cast<int64_t>(b.num_layers) * b.num_kv_heads;
  state->indptr = h.indptr_a;
  state->first_row.clear();
  for (size_t k2 = 0; k2 < h.order.size(); ++k2) {
    state->first_row[b.seqs[h.order[k2]].id] = h.first_row(static_cast<int32_t>(k2), rows_per_seq);
  }
  state->valid = true;
}

std::vector<int32_t> ApplyTableGather(const HostStep& h, const std::vector<int32_t>& last) {
  std::vector<int32_t> out(h.indptr_a.empty() ? 0 : h.indptr_a.back(), -1);
  for (size_t s = 0; s + 4 <= h.gather_segments.size(); s += 4) {
    const int32_t* seg = h.gather_segments.data() + s;
    const std::vector<int32_t>& from = seg[3] != 0 ? h.gather_upload : last;
    for (int32_t i = 0; i < seg[2]; ++i) out.at(seg[0] + i) = from.at(seg[1] + i);
  }
  return out;
}

}  // namespace hkv
