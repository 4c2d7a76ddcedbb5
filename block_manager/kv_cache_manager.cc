#include "block_manager/kv_cache_manager.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/logging.h"

namespace hkv {

KvCacheManager::KvCacheManager(const KvCacheConfig& config)
    : config_(config), pool_(config.num_blocks, config.num_partitions) {
  HKV_CHECK(config.block_size >= 1 && config.num_layers >= 1 && config.num_kv_heads >= 1)
      << "block_size=" << config.block_size << " num_layers=" << config.num_layers
      << " num_kv_heads=" << config.num_kv_heads;
  if (config.num_partitions > 1) {
    HKV_CHECK(static_cast<int32_t>(config.row_partition.size()) == num_rows_per_seq())
        << "row_partition needs one entry per (layer, kv_head)";
    for (int32_t p : config.row_partition) {
      HKV_CHECK(p >= 0 && p < config.num_partitions) << "row partition " << p;
    }
  }
}

int64_t KvCacheManager::FootprintBlocks(absl::Span<const int32_t> tokens_per_row) const {
  HKV_CHECK(static_cast<int32_t>(tokens_per_row.size()) == num_rows_per_seq());
  int64_t blocks = 0;
  for (int32_t t : tokens_per_row) {
    HKV_CHECK(t >= 0) << "negative token count " << t;
    blocks += BlockTable::BlocksFor(t, config_.block_size);
  }
  return blocks;
}

int64_t KvCacheManager::FootprintBlocksUniform(int32_t tokens) const {
  return int64_t{num_rows_per_seq()} * BlockTable::BlocksFor(tokens, config_.block_size);
}

int64_t KvCacheManager::NewBlocksNeeded(RequestId seq,
                                        absl::Span<const int32_t> new_tokens_per_row) const {
  HKV_CHECK(static_cast<int32_t>(new_tokens_per_row.size()) == num_rows_per_seq());
  auto it = seqs_.find(seq);
  if (it == seqs_.end()) return FootprintBlocks(new_tokens_per_row);
  int64_t blocks = 0;
  for (int32_t r = 0; r < num_rows_per_seq(); ++r) {
    const BlockTable& t = it->second.rows[r];
    const int32_t n = new_tokens_per_row[r];
    HKV_CHECK(n >= 0) << "negative growth " << n;
    blocks += t.NewBlocksFor(n, config_.block_size) + (NeedsCopy(it->second, t, n) ? 1 : 0);
  }
  return blocks;
}

int64_t KvCacheManager::NewBlocksNeededUniform(RequestId seq, int32_t new_tokens) const {
  return NewBlocksNeeded(seq, std::vector<int32_t>(num_rows_per_seq(), new_tokens));
}

bool KvCacheManager::Append(RequestId seq, absl::Span<const int32_t> new_tokens_per_row) {
  const int32_t rows = num_rows_per_seq();
  auto it = seqs_.find(seq);
  HKV_CHECK(it == seqs_.end() || !it->second.reservation.has_value())
      << "Append to sequence " << seq << " with an uncommitted reservation";
  // Each row draws from its partition (tensor-parallel rank); without partitions, all from 0.
  auto partition = [this](int32_t r) {
    return config_.num_partitions > 1 ? config_.row_partition[r] : 0;
  };
  static const BlockTable kEmpty;
  static const SequenceKv kNew;
  const SequenceKv& before = it == seqs_.end() ? kNew : it->second;
  std::vector<int32_t> need(config_.num_partitions, 0);
  // Per row, once (each is a lookup of the last block's count in the pool, a cache miss at
  // batch 256 x 256 rows): whether its shared last block is copied first, and its new blocks.
  // Releasing one row's shared block below never changes another row's answer: the rows of a
  // sequence hold distinct blocks (forks share blocks across sequences only).
  std::vector<uint8_t> copy(rows);
  std::vector<int32_t> grow(rows);
  for (int32_t r = 0; r < rows; ++r) {
    const BlockTable& t = it == seqs_.end() ? kEmpty : it->second.rows[r];
    const int32_t n = new_tokens_per_row[r];
    copy[r] = NeedsCopy(before, t, n) ? 1 : 0;
    grow[r] = t.NewBlocksFor(n, config_.block_size);
    need[partition(r)] += grow[r] + copy[r];
  }
  for (int32_t p = 0; p < config_.num_partitions; ++p) {
    if (need[p] > pool_.num_free(p)) return false;
  }
  // Fresh blocks per partition, handed out in row order.
  std::vector<std::vector<BlockId>> fresh(config_.num_partitions);
  std::vector<size_t> next(config_.num_partitions, 0);
  for (int32_t p = 0; p < config_.num_partitions; ++p) fresh[p] = *pool_.Allocate(need[p], p);
  if (it == seqs_.end()) {
    it = seqs_.emplace(seq, SequenceKv{}).first;
    it->second.rows.resize(rows);
  }
  SequenceKv& kv = it->second;
  bool uniform = true;
  for (int32_t r = 1; r < rows && uniform; ++r) {
    uniform = new_tokens_per_row[r] == new_tokens_per_row[0];
  }
  if (kv.exported && uniform) kv.grow_all += new_tokens_per_row[0];
  for (int32_t r = 0; r < rows; ++r) {
    BlockTable& t = kv.rows[r];
    const int32_t n = new_tokens_per_row[r], p = partition(r);
    if (kv.exported && n > 0 && (!uniform || copy[r] || grow[r] > 0)) {
      // A copy-on-write replaces the last block; growth appends after the current ones.
      const int32_t held = static_cast<int32_t>(t.blocks.size());
      MarkRowChanged(kv, r, copy[r] ? held - 1 : held);
    }
    if (copy[r]) {
      // The shared block stays held by its other tables until this step's copy has read it:
      // copies run first in the step, and a block freed now is reallocated only by a later
      // Schedule, after the step.
      const BlockId shared = t.blocks.back();
      const BlockId copy = fresh[p][next[p]++];
      pending_copies_.emplace_back(shared, copy);
      pool_.Release(shared);
      t.blocks.back() = copy;
    }
    t.blocks.insert(t.blocks.end(), fresh[p].begin() + next[p],
                    fresh[p].begin() + next[p] + grow[r]);
    next[p] += grow[r];
    t.num_tokens += n;
  }
  for (int32_t p = 0; p < config_.num_partitions; ++p) HKV_CHECK(next[p] == fresh[p].size());
  return true;
}

bool KvCacheManager::AppendUniform(RequestId seq, int32_t new_tokens) {
  auto it = seqs_.find(seq);
  // The general path: a new sequence, one whose blocks may be shared (copy-on-write), rows
  // over partitions, or an uncommitted reservation (which Append refuses).
  if (it == seqs_.end() || it->second.may_share || config_.num_partitions > 1 ||
      it->second.reservation.has_value() || new_tokens <= 0) {
    return Append(seq, std::vector<int32_t>(num_rows_per_seq(), new_tokens));
  }
  // The decode step's path (every running sequence, every step): two passes over the rows, no
  // per-call vectors; same result as Append (no copies: nothing is shared).
  SequenceKv& kv = it->second;
  int32_t need = 0;
  for (const BlockTable& t : kv.rows) need += t.NewBlocksFor(new_tokens, config_.block_size);
  if (need > pool_.num_free(0)) return false;
  std::vector<BlockId> fresh;
  if (need > 0) fresh = *pool_.Allocate(need, 0);
  if (kv.exported) kv.grow_all += new_tokens;
  size_t next = 0;
  for (int32_t r = 0; r < static_cast<int32_t>(kv.rows.size()); ++r) {
    BlockTable& t = kv.rows[r];
    const int32_t grow = t.NewBlocksFor(new_tokens, config_.block_size);
    if (grow > 0) {
      if (kv.exported) MarkRowChanged(kv, r, static_cast<int32_t>(t.blocks.size()));
      t.blocks.insert(t.blocks.end(), fresh.begin() + next, fresh.begin() + next + grow);
      next += grow;
    }
    t.num_tokens += new_tokens;
  }
  HKV_CHECK(next == fresh.size());
  return true;
}

std::optional<KvCacheManager::LayerReservation> KvCacheManager::ReserveLayers(
    RequestId seq, absl::Span<const int32_t> blocks_per_layer) {
  HKV_CHECK(!Contains(seq)) << "ReserveLayers for live sequence " << seq;
  HKV_CHECK(config_.num_partitions == 1) << "adaptive reservations need one pool partition";
  HKV_CHECK(static_cast<int32_t>(blocks_per_layer.size()) == config_.num_layers);
  LayerReservation res;
  res.indptr.push_back(0);
  for (int32_t b : blocks_per_layer) {
    HKV_CHECK(b >= 0) << "negative reservation " << b;
    res.indptr.push_back(res.indptr.back() + b);
  }
  std::optional<std::vector<BlockId>> blocks = pool_.Allocate(res.indptr.back());
  if (!blocks.has_value()) return std::nullopt;
  res.blocks = *std::move(blocks);
  SequenceKv kv;
  kv.rows.resize(num_rows_per_seq());
  kv.reservation = res;
  seqs_.emplace(seq, std::move(kv));
  return res;
}

absl::Status KvCacheManager::CommitAdaptive(RequestId seq, absl::Span<const int32_t> kept_per_row) {
  auto it = seqs_.find(seq);
  if (it == seqs_.end() || !it->second.reservation.has_value()) {
    return absl::InvalidArgumentError(
        absl::StrCat("CommitAdaptive: sequence ", seq, " has no reservation"));
  }
  if (static_cast<int32_t>(kept_per_row.size()) != num_rows_per_seq()) {
    return absl::InvalidArgumentError(absl::StrCat("CommitAdaptive: ", kept_per_row.size(),
                                                   " counts for ", num_rows_per_seq(), " rows"));
  }
  const LayerReservation& res = *it->second.reservation;
  const int32_t heads = config_.num_kv_heads;
  for (int32_t l = 0; l < config_.num_layers; ++l) {
    int64_t need = 0;
    for (int32_t h = 0; h < heads; ++h) {
      const int32_t kept = kept_per_row[l * heads + h];
      if (kept < 0) {
        return absl::InvalidArgumentError(
            absl::StrCat("CommitAdaptive: layer ", l, " head ", h, " keeps ", kept, " tokens"));
      }
      need += BlockTable::BlocksFor(kept, config_.block_size);
    }
    if (need > res.indptr[l + 1] - res.indptr[l]) {
      return absl::InvalidArgumentError(absl::StrCat("CommitAdaptive: layer ", l, " needs ", need,
                                                     " blocks but reserved ",
                                                     res.indptr[l + 1] - res.indptr[l]));
    }
  }
  for (int32_t l = 0; l < config_.num_layers; ++l) {
    int32_t next = res.indptr[l];
    for (int32_t h = 0; h < heads; ++h) {
      BlockTable& t = it->second.rows[l * heads + h];
      if (it->second.exported) MarkRowChanged(it->second, l * heads + h, 0);
      t.num_tokens = kept_per_row[l * heads + h];
      const int32_t nb = BlockTable::BlocksFor(t.num_tokens, config_.block_size);
      t.blocks.assign(res.blocks.begin() + next, res.blocks.begin() + next + nb);
      next += nb;
    }
    for (; next < res.indptr[l + 1]; ++next) pool_.Release(res.blocks[next]);
  }
  it->second.reservation.reset();
  return absl::OkStatus();
}

absl::Status KvCacheManager::Shrink(RequestId seq, absl::Span<const int32_t> kept_per_row) {
  auto it = seqs_.find(seq);
  if (it == seqs_.end() || it->second.reservation.has_value()) {
    return absl::InvalidArgumentError(
        absl::StrCat("Shrink: sequence ", seq, " is unknown or holds a reservation"));
  }
  if (static_cast<int32_t>(kept_per_row.size()) != num_rows_per_seq()) {
    return absl::InvalidArgumentError(
        absl::StrCat("Shrink: ", kept_per_row.size(), " counts for ", num_rows_per_seq(), " rows"));
  }
  std::vector<BlockTable>& rows = it->second.rows;
  for (int32_t r = 0; r < num_rows_per_seq(); ++r) {
    if (kept_per_row[r] < 0 || kept_per_row[r] > rows[r].num_tokens) {
      return absl::InvalidArgumentError(absl::StrCat("Shrink: row ", r, " keeps ", kept_per_row[r],
                                                     " of its ", rows[r].num_tokens, " tokens"));
    }
  }
  for (int32_t r = 0; r < num_rows_per_seq(); ++r) {
    BlockTable& t = rows[r];
    const size_t keep = BlockTable::BlocksFor(kept_per_row[r], config_.block_size);
    if (it->second.exported && kept_per_row[r] != t.num_tokens) {
      MarkRowChanged(it->second, r, static_cast<int32_t>(keep));
    }
    t.num_tokens = kept_per_row[r];
    for (size_t b = keep; b < t.blocks.size(); ++b) pool_.Release(t.blocks[b]);
    t.blocks.resize(keep);
  }
  return absl::OkStatus();
}

bool KvCacheManager::NeedsCopy(const SequenceKv& kv, const BlockTable& t,
                               int32_t new_tokens) const {
  if (!kv.may_share || new_tokens == 0 || t.num_tokens % config_.block_size == 0) return false;
  return pool_.ref_count(t.blocks.back()) > 1;
}

absl::Status KvCacheManager::Fork(RequestId src, RequestId dst) {
  auto it = seqs_.find(src);
  if (it == seqs_.end() || it->second.reservation.has_value() || seqs_.contains(dst)) {
    return absl::InvalidArgumentError(absl::StrCat("Fork ", src, " -> ", dst, ": ",
                                                   it == seqs_.end() ? "no such source sequence"
                                                   : seqs_.contains(dst)
                                                       ? "the destination exists"
                                                       : "the source has a reservation"));
  }
  SequenceKv copy;  // A new sequence for the receiver: exported afresh.
  copy.rows = it->second.rows;
  copy.may_share = true;
  it->second.may_share = true;
  for (const BlockTable& t : copy.rows) {
    for (BlockId b : t.blocks) pool_.IncRef(b);
  }
  seqs_.emplace(dst, std::move(copy));
  return absl::OkStatus();
}

std::vector<std::pair<BlockId, BlockId>> KvCacheManager::TakeBlockCopies() {
  return std::exchange(pending_copies_, {});
}

void KvCacheManager::Free(RequestId seq) {
  auto it = seqs_.find(seq);
  if (it == seqs_.end()) return;
  for (const BlockTable& t : it->second.rows) {
    for (BlockId b : t.blocks) pool_.Release(b);
  }
  if (it->second.reservation.has_value()) {
    for (BlockId b : it->second.reservation->blocks) pool_.Release(b);
  }
  MarkDropped(it->second, seq);
  seqs_.erase(it);
}

bool KvCacheManager::Contains(RequestId seq) const { return seqs_.contains(seq); }

std::vector<int32_t> KvCacheManager::RowLengths(RequestId seq) const {
  auto it = seqs_.find(seq);
  HKV_CHECK(it != seqs_.end()) << "unknown sequence " << seq;
  std::vector<int32_t> out;
  out.reserve(it->second.rows.size());
  for (const BlockTable& t : it->second.rows) out.push_back(t.num_tokens);
  return out;
}

const BlockTable& KvCacheManager::Table(RequestId seq, int32_t layer, int32_t kv_head) const {
  auto it = seqs_.find(seq);
  HKV_CHECK(it != seqs_.end()) << "unknown sequence " << seq;
  HKV_CHECK(layer >= 0 && layer < config_.num_layers && kv_head >= 0 &&
            kv_head < config_.num_kv_heads);
  return it->second.rows[layer * config_.num_kv_heads + kv_head];
}

int64_t KvCacheManager::SequenceBlocks(RequestId seq) const {
  auto it = seqs_.find(seq);
  if (it == seqs_.end()) return 0;
  int64_t blocks = 0;
  for (const BlockTable& t : it->second.rows) blocks += t.blocks.size();
  if (it->second.reservation.has_value()) blocks += it->second.reservation->blocks.size();
  return blocks;
}

KvCsr KvCacheManager::ExportCsr(absl::Span<const RequestId> seqs) const {
  KvCsr csr;
  const size_t rows = seqs.size() * num_rows_per_seq();
  csr.indptr.reserve(rows + 1);
  csr.last_len.reserve(rows);
  csr.num_tokens.reserve(rows);
  csr.indptr.push_back(0);
  std::vector<const SequenceKv*> found;
  found.reserve(seqs.size());
  size_t total = 0;  // Sized first: at batch 256 the list has millions of entries.
  for (RequestId seq : seqs) {
    auto it = seqs_.find(seq);
    HKV_CHECK(it != seqs_.end()) << "ExportCsr of unknown sequence " << seq;
    found.push_back(&it->second);
    for (const BlockTable& t : it->second.rows) total += t.blocks.size();
  }
  csr.indices.reserve(total);
  // Each row's blocks sit in their own heap buffer: a cache miss per row, 65,536 rows at batch
  // 256. Prefetching a few rows ahead overlaps those misses instead of taking them in turn.
  constexpr size_t kAhead = 8;
  for (const SequenceKv* kv : found) {
    const std::vector<BlockTable>& rows = kv->rows;
    for (size_t r = 0; r < rows.size(); ++r) {
      if (r + kAhead < rows.size() && !rows[r + kAhead].blocks.empty()) {
        const BlockId* ahead = rows[r + kAhead].blocks.data();
        __builtin_prefetch(ahead);
        __builtin_prefetch(ahead + 16);  // the next 64-byte line: most rows span two or more
      }
      const BlockTable& t = rows[r];
      csr.indices.insert(csr.indices.end(), t.blocks.begin(), t.blocks.end());
      csr.indptr.push_back(static_cast<int32_t>(csr.indices.size()));
      csr.last_len.push_back(t.last_len(config_.block_size));
      csr.num_tokens.push_back(t.num_tokens);
    }
  }
  return csr;
}

std::vector<int64_t> KvCacheManager::BlocksPerLayer() const {
  std::vector<int64_t> out(config_.num_layers, 0);
  for (const auto& [id, kv] : seqs_) {
    for (int32_t r = 0; r < num_rows_per_seq(); ++r) {
      out[r / config_.num_kv_heads] += kv.rows[r].blocks.size();
    }
    if (kv.reservation.has_value()) {
      for (int32_t l = 0; l < config_.num_layers; ++l) {
        out[l] += kv.reservation->indptr[l + 1] - kv.reservation->indptr[l];
      }
    }
  }
  return out;
}

}  // namespace hkv
