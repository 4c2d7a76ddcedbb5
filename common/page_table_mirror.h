#pragma once
// PageTableMirror: the receiving end of KvCacheManager::ExportDelta (common/page_table_delta.h).
// It holds every exported live sequence's rows, applies each step's delta, and gives the full
// CSR of common/batch.h for the consumers that read whole tables (the CPU worker, tests), or
// the rows themselves (the CUDA worker, which builds its device CSR from the changes only).
//
// Thread-compatible: owned by one thread (the one that applies the deltas).

#include <cstdint>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/types/span.h"
#include "common/batch.h"
#include "common/block_table.h"
#include "common/ids.h"
#include "common/page_table_delta.h"

namespace hkv {

// Whole page tables of some sequences, rows in common/batch.h's order (KvCacheManager::
// ExportCsr gives the same, as KvCsr).
struct PageTableCsr {
  std::vector<int32_t> indptr;      // [rows + 1]
  std::vector<BlockId> indices;     // [indptr.back()]
  std::vector<int32_t> last_len;    // [rows] tokens in each row's last block (0 for empty rows)
  std::vector<int32_t> num_tokens;  // [rows]
};

class PageTableMirror {
 public:
  // Applies `delta` (the next in the stream). DATA_LOSS, leaving the mirror unusable, for a
  // delta that does not follow the ones applied (a changed row of an unknown sequence, keeping
  // more blocks than held, a row whose block count does not fit its tokens).
  absl::Status Apply(const PageTableDelta& delta);
  // Forgets everything (a receiver that lost the stream starts again from fresh sequences).
  void Clear() {
    seqs_.clear();
    block_size_ = 0;
  }

  bool Contains(RequestId seq) const { return seqs_.contains(seq); }
  int64_t num_seqs() const { return static_cast<int64_t>(seqs_.size()); }
  // REQUIRES: Contains(seq).
  const std::vector<BlockTable>& Rows(RequestId seq) const;
  // The CSR of `seqs` in order, as KvCacheManager::ExportCsr gives it. REQUIRES: Contains each.
  PageTableCsr Csr(absl::Span<const RequestId> seqs) const;
  // Fills batch->kv_indptr and kv_indices with the mirror's rows of batch->seqs, making a delta
  // batch (after Apply(*batch->kv_delta)) a full-CSR one. DATA_LOSS when a sequence is not
  // held or a row's kv_len_after is not the mirror's token count.
  absl::Status FillBatchCsr(Batch* batch) const;
  // The rows of each of `batch`'s sequences, in order, after the same checks as FillBatchCsr.
  absl::Status RowsOf(const Batch& batch, std::vector<const std::vector<BlockTable>*>* rows) const;

 private:
  int32_t block_size_ = 0;
  absl::flat_hash_map<RequestId, std::vector<BlockTable>> seqs_;
};

}  // namespace hkv
