// KvCacheManager's page-table deltas (ExportDelta and its tracking); see
// common/page_table_delta.h for the format.

#include <algorithm>
#include <utility>

#include "block_manager/kv_cache_manager.h"
#include "common/logging.h"

namespace hkv {

void KvCacheManager::MarkRowChanged(SequenceKv& kv, int32_t r, int32_t keep) {
  if (kv.dirty_keep.empty()) kv.dirty_keep.assign(kv.rows.size(), -1);
  if (kv.dirty_keep[r] < 0) {
    kv.dirty_rows.push_back(r);
    kv.dirty_keep[r] = keep;
  } else {
    kv.dirty_keep[r] = std::min(kv.dirty_keep[r], keep);
  }
}

void KvCacheManager::MarkDropped(const SequenceKv& kv, RequestId seq) {
  if (kv.exported) dropped_.push_back(seq);
}

PageTableDelta KvCacheManager::ExportDelta(absl::Span<const RequestId> seqs) {
  PageTableDelta d;
  d.num_rows_per_seq = num_rows_per_seq();
  d.block_size = config_.block_size;
  d.reset = std::exchange(delta_reset_, false);
  d.dropped = std::exchange(dropped_, {});
  d.seqs.reserve(seqs.size());
  for (RequestId seq : seqs) {
    auto it = seqs_.find(seq);
    HKV_CHECK(it != seqs_.end()) << "ExportDelta of unknown sequence " << seq;
    SequenceKv& kv = it->second;
    SequenceTableDelta& s = d.seqs.emplace_back();
    s.id = seq;
    s.fresh = !kv.exported;
    s.tail_indptr.push_back(0);
    auto add_row = [&](int32_t r, int32_t keep) {
      const BlockTable& t = kv.rows[r];
      s.rows.push_back(r);
      s.keep.push_back(keep);
      s.num_tokens.push_back(t.num_tokens);
      s.tail_blocks.insert(s.tail_blocks.end(), t.blocks.begin() + keep, t.blocks.end());
      s.tail_indptr.push_back(static_cast<int32_t>(s.tail_blocks.size()));
    };
    if (s.fresh) {
      for (int32_t r = 0; r < num_rows_per_seq(); ++r) add_row(r, 0);
    } else {
      s.grow_all = kv.grow_all;
      std::sort(kv.dirty_rows.begin(), kv.dirty_rows.end());
      for (int32_t r : kv.dirty_rows) {
        add_row(r, std::min<int32_t>(kv.dirty_keep[r], kv.rows[r].blocks.size()));
        kv.dirty_keep[r] = -1;
      }
    }
    kv.exported = true;
    kv.grow_all = 0;
    kv.dirty_rows.clear();
  }
  return d;
}

void KvCacheManager::ResetDeltaTracking() {
  delta_reset_ = true;
  dropped_.clear();
  for (auto& [id, kv] : seqs_) {
    kv.exported = false;
    kv.grow_all = 0;
    kv.dirty_rows.clear();
    kv.dirty_keep.clear();
  }
}

std::vector<int32_t> KvCacheManager::ExportRowTokens(absl::Span<const RequestId> seqs) const {
  std::vector<int32_t> tokens;
  tokens.reserve(seqs.size() * num_rows_per_seq());
  for (RequestId seq : seqs) {
    auto it = seqs_.find(seq);
    HKV_CHECK(it != seqs_.end()) << "ExportRowTokens of unknown sequence " << seq;
    for (const BlockTable& t : it->second.rows) tokens.push_back(t.num_tokens);
  }
  return tokens;
}

}  // namespace hkv
