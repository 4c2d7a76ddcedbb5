#pragma once
// PageTableMirror: the receiving end of KvCacheManager::ExportDelta (common/page_table_delta.h).
// It holds every exported live sequence's rows, applies each step's delta, and gives the full
// CSR of common/batch.h for the consumers that read whole tables (the CPU worker, ranks in
// other processes, tests), so only the hot path needs to handle deltas.
//
// Thread-compatible: owned by one thread (the one that applies the deltas).

#include <cstdint>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/types/span.h"
#include "block_manager/block_table.h"
#include "block_manager/kv_cache_manager.h"
#include "common/ids.h"
#include "common/page_table_delta.h"

namespace hkv {

class PageTableMirror {
 public:
  // Applies `delta` (the next in the stream). DATA_LOSS, leaving the mirror unusable, for a
  // delta that does not follow the ones applied (a changed row of an unknown sequence, keeping
  // more blocks than held, a row whose block count does not fit its tokens).
  absl::Status Apply(const PageTableDelta& delta);

  bool Contains(RequestId seq) const { return seqs_.contains(seq); }
  int64_t num_seqs() const { return static_cast<int64_t>(seqs_.size()); }
  // REQUIRES: Contains(seq).
  const std::vector<BlockTable>& Rows(RequestId seq) const;
  // The CSR of `seqs` in order, as KvCacheManager::ExportCsr gives it. REQUIRES: Contains each.
  KvCsr Csr(absl::Span<const RequestId> seqs) const;

 private:
  int32_t block_size_ = 0;
  absl::flat_hash_map<RequestId, std::vector<BlockTable>> seqs_;
};

}  // namespace hkv
