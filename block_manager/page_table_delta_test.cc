// KvCacheManager::ExportDelta + PageTableMirror: a mirror that applies every delta holds, for
// the sequences of each step, exactly ExportCsr's rows, after random sequences of admissions,
// decode and chunk growth, per-row growth, forks with copy-on-write, frees (aborts, preemptions,
// re-admissions under the same id), adaptive reservations and commits, and shrinks after
// selection; and a delta carries only what changed.

#include <algorithm>
#include <map>
#include <random>
#include <set>
#include <vector>

#include "block_manager/kv_cache_manager.h"
#include "common/page_table_mirror.h"
#include "gtest/gtest.h"

namespace hkv {
namespace {

KvCacheConfig Config(int32_t layers, int32_t heads, int32_t block_size, int32_t blocks) {
  KvCacheConfig c;
  c.num_layers = layers;
  c.num_kv_heads = heads;
  c.block_size = block_size;
  c.num_blocks = blocks;
  return c;
}

// Exports `ids` both ways and checks that the mirror, after the delta, equals the full CSR.
void ExpectMirrorMatches(KvCacheManager& m, PageTableMirror& mirror,
                         const std::vector<RequestId>& ids) {
  const PageTableDelta d = m.ExportDelta(ids);
  ASSERT_TRUE(mirror.Apply(d).ok());
  const KvCsr want = m.ExportCsr(ids);
  const KvCsr got = mirror.Csr(ids);
  ASSERT_EQ(got.indptr, want.indptr);
  ASSERT_EQ(got.indices, want.indices);
  ASSERT_EQ(got.num_tokens, want.num_tokens);
  ASSERT_EQ(got.last_len, want.last_len);
}

TEST(PageTableDeltaTest, DecodeStepsCarryOnlyNewBlocks) {
  KvCacheManager m(Config(2, 2, 4, 200));
  PageTableMirror mirror;
  ASSERT_TRUE(m.AppendUniform(1, 6));  // 2 blocks per row
  PageTableDelta d = m.ExportDelta({1});
  ASSERT_EQ(d.seqs.size(), 1u);
  EXPECT_TRUE(d.seqs[0].fresh);
  EXPECT_EQ(d.num_changed_rows(), 4);
  EXPECT_EQ(d.num_tail_blocks(), 8);
  ASSERT_TRUE(mirror.Apply(d).ok());
  // Tokens 7 and 8 fill the last blocks: lengths only.
  for (int step = 0; step < 2; ++step) {
    ASSERT_TRUE(m.AppendUniform(1, 1));
    d = m.ExportDelta({1});
    EXPECT_FALSE(d.seqs[0].fresh);
    EXPECT_EQ(d.seqs[0].grow_all, 1);
    EXPECT_EQ(d.num_changed_rows(), 0);
    ASSERT_TRUE(mirror.Apply(d).ok());
  }
  // Token 9 opens a block in every row: one block per row, the first two kept.
  ASSERT_TRUE(m.AppendUniform(1, 1));
  d = m.ExportDelta({1});
  EXPECT_EQ(d.num_changed_rows(), 4);
  EXPECT_EQ(d.num_tail_blocks(), 4);
  for (int32_t k : d.seqs[0].keep) EXPECT_EQ(k, 2);
  ASSERT_TRUE(mirror.Apply(d).ok());
  EXPECT_EQ(mirror.Csr({1}).indices, m.ExportCsr({1}).indices);
  EXPECT_EQ(mirror.Csr({1}).num_tokens, m.ExportCsr({1}).num_tokens);
}

TEST(PageTableDeltaTest, CopyOnWriteReplacesTheLastBlock) {
  KvCacheManager m(Config(1, 2, 4, 100));
  PageTableMirror mirror;
  ASSERT_TRUE(m.AppendUniform(1, 6));
  ExpectMirrorMatches(m, mirror, {1});
  ASSERT_TRUE(m.Fork(1, 2).ok());
  ExpectMirrorMatches(m, mirror, {1, 2});
  ASSERT_TRUE(m.AppendUniform(2, 1));  // the shared partial block is copied for seq 2
  ASSERT_EQ(m.TakeBlockCopies().size(), 2u);
  const PageTableDelta d = m.ExportDelta({1, 2});
  ASSERT_EQ(d.seqs.size(), 2u);
  EXPECT_EQ(d.seqs[0].rows.size(), 0u);
  ASSERT_EQ(d.seqs[1].rows.size(), 2u);
  for (int32_t k : d.seqs[1].keep) EXPECT_EQ(k, 1);
  EXPECT_EQ(d.seqs[1].tail_blocks.size(), 2u);
  ASSERT_TRUE(mirror.Apply(d).ok());
  EXPECT_EQ(mirror.Csr({1, 2}).indices, m.ExportCsr({1, 2}).indices);
}

TEST(PageTableDeltaTest, ReadmissionUnderTheSameIdStartsAfresh) {
  KvCacheManager m(Config(1, 1, 4, 100));
  PageTableMirror mirror;
  ASSERT_TRUE(m.AppendUniform(5, 9));
  ExpectMirrorMatches(m, mirror, {5});
  m.Free(5);                           // preempted
  ASSERT_TRUE(m.AppendUniform(5, 3));  // recomputed
  const PageTableDelta d = m.ExportDelta({5});
  EXPECT_EQ(d.dropped, std::vector<RequestId>{5});
  ASSERT_EQ(d.seqs.size(), 1u);
  EXPECT_TRUE(d.seqs[0].fresh);
  ASSERT_TRUE(mirror.Apply(d).ok());
  EXPECT_EQ(mirror.Csr({5}).num_tokens, std::vector<int32_t>{3});
  m.Free(5);
  EXPECT_EQ(m.ExportDelta({}).dropped, std::vector<RequestId>{5});
  // Never exported: nothing to drop.
  ASSERT_TRUE(m.AppendUniform(6, 3));
  m.Free(6);
  EXPECT_TRUE(m.ExportDelta({}).dropped.empty());
}

TEST(PageTableDeltaTest, ShrinkCutsRowsAndKeepsTheirHead) {
  KvCacheManager m(Config(1, 2, 4, 100));
  PageTableMirror mirror;
  ASSERT_TRUE(m.AppendUniform(1, 16));
  ExpectMirrorMatches(m, mirror, {1});
  ASSERT_TRUE(m.Shrink(1, {5, 16}).ok());
  const PageTableDelta d = m.ExportDelta({1});
  ASSERT_EQ(d.seqs[0].rows, std::vector<int32_t>{0});  // row 1 kept everything
  EXPECT_EQ(d.seqs[0].keep, std::vector<int32_t>{2});
  EXPECT_TRUE(d.seqs[0].tail_blocks.empty());
  ASSERT_TRUE(mirror.Apply(d).ok());
  EXPECT_EQ(mirror.Csr({1}).indices, m.ExportCsr({1}).indices);
  EXPECT_EQ(mirror.Csr({1}).num_tokens, m.ExportCsr({1}).num_tokens);
}

TEST(PageTableDeltaTest, MirrorRejectsADeltaThatDoesNotFollow) {
  KvCacheManager m(Config(1, 1, 4, 100));
  PageTableMirror mirror;
  ASSERT_TRUE(m.AppendUniform(1, 4));
  ASSERT_TRUE(mirror.Apply(m.ExportDelta({1})).ok());
  ASSERT_TRUE(m.AppendUniform(1, 1));
  (void)m.ExportDelta({1});  // lost: the mirror never sees the new block
  ASSERT_TRUE(m.AppendUniform(1, 1));
  EXPECT_EQ(mirror.Apply(m.ExportDelta({1})).code(), absl::StatusCode::kDataLoss);
  PageTableMirror fresh;
  PageTableDelta unknown = m.ExportDelta({1});
  EXPECT_EQ(fresh.Apply(unknown).code(), absl::StatusCode::kDataLoss);
}

// Random operations between exports of random subsets of the live sequences.
class DeltaHarness {
 public:
  DeltaHarness(const KvCacheConfig& c, uint32_t seed) : m_(c), c_(c), rng_(seed) {}

  void Run(int steps) {
    for (int s = 0; s < steps && !::testing::Test::HasFatalFailure(); ++s) {
      const int ops = Uniform(1, 4);
      for (int k = 0; k < ops; ++k) Op();
      (void)m_.TakeBlockCopies();
      Export();
    }
  }
  int64_t exports() const { return exports_; }
  int64_t shrinks() const { return shrinks_; }
  int64_t forks() const { return forks_; }
  int64_t commits() const { return commits_; }
  int64_t readmits() const { return readmits_; }

 private:
  int Uniform(int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng_); }
  int32_t rows() const { return m_.num_rows_per_seq(); }

  RequestId Pick(const std::set<RequestId>& s) {
    return *std::next(s.begin(), Uniform(0, static_cast<int>(s.size()) - 1));
  }

  void Op() {
    const int op = Uniform(0, 99);
    if (op < 15) {
      // Admit: a fresh id, or a preempted one coming back (recompute under the same id).
      RequestId id = next_id_++;
      if (!gone_.empty() && Uniform(0, 2) == 0) {
        id = Pick(gone_);
        gone_.erase(id);
        ++readmits_;
      }
      if (Uniform(0, 3) == 0 && m_.config().num_partitions == 1) {
        std::vector<int32_t> blocks(c_.num_layers);
        for (int32_t& b : blocks) b = Uniform(0, 3 * c_.num_kv_heads);
        if (m_.ReserveLayers(id, blocks).has_value()) {
          reserved_[id] = blocks;
        } else {
          gone_.insert(id);
        }
        return;
      }
      std::vector<int32_t> n(rows(), Uniform(1, 40));
      if (Uniform(0, 1)) {
        for (int32_t& x : n) x = Uniform(0, 40);
      }
      if (m_.Append(id, n)) {
        live_.insert(id);
      } else {
        gone_.insert(id);
      }
    } else if (op < 50) {
      if (live_.empty()) return;
      const RequestId id = Pick(live_);
      std::vector<int32_t> n(rows(), Uniform(0, 2) == 0 ? Uniform(1, 20) : 1);
      if (Uniform(0, 4) == 0) {
        for (int32_t& x : n) x = Uniform(0, 9);
      }
      (void)m_.Append(id, n);  // may be short of blocks: then nothing changed
    } else if (op < 60) {
      if (live_.empty()) return;
      const RequestId dst = next_id_++;
      ASSERT_TRUE(m_.Fork(Pick(live_), dst).ok());
      live_.insert(dst);
      ++forks_;
    } else if (op < 70) {
      if (live_.empty()) return;
      const RequestId id = Pick(live_);
      std::vector<int32_t> kept = m_.RowLengths(id);
      for (int32_t& k : kept) {
        if (Uniform(0, 2) > 0) k = Uniform(0, k);
      }
      ASSERT_TRUE(m_.Shrink(id, kept).ok());
      ++shrinks_;
    } else if (op < 78) {
      if (reserved_.empty()) return;
      auto it = std::next(reserved_.begin(), Uniform(0, static_cast<int>(reserved_.size()) - 1));
      std::vector<int32_t> kept(rows(), 0);
      for (int32_t l = 0; l < c_.num_layers; ++l) {
        int32_t left = it->second[l];
        for (int32_t h = 0; h < c_.num_kv_heads; ++h) {
          const int32_t b = Uniform(0, left);
          left -= b;
          kept[l * c_.num_kv_heads + h] =
              b == 0 ? 0 : (b - 1) * c_.block_size + Uniform(1, c_.block_size);
        }
      }
      ASSERT_TRUE(m_.CommitAdaptive(it->first, kept).ok());
      live_.insert(it->first);
      reserved_.erase(it);
      ++commits_;
    } else {
      // Finish, abort or preempt.
      const size_t total = live_.size() + reserved_.size();
      if (total == 0) return;
      const size_t k = Uniform(0, static_cast<int>(total) - 1);
      RequestId id;
      if (k < live_.size()) {
        id = *std::next(live_.begin(), k);
        live_.erase(id);
      } else {
        id = std::next(reserved_.begin(), k - live_.size())->first;
        reserved_.erase(id);
      }
      m_.Free(id);
      gone_.insert(id);
    }
  }

  // A step: some of the live sequences (a reservation's rows are empty), in random order.
  void Export() {
    std::vector<RequestId> ids;
    for (RequestId id : live_) {
      if (Uniform(0, 3) > 0) ids.push_back(id);
    }
    for (const auto& [id, b] : reserved_) {
      if (Uniform(0, 1)) ids.push_back(id);
    }
    std::shuffle(ids.begin(), ids.end(), rng_);
    ExpectMirrorMatches(m_, mirror_, ids);
    ++exports_;
  }

  KvCacheManager m_;
  KvCacheConfig c_;
  std::mt19937 rng_;
  PageTableMirror mirror_;
  RequestId next_id_ = 1;
  std::set<RequestId> live_, gone_;
  std::map<RequestId, std::vector<int32_t>> reserved_;  // blocks per layer
  int64_t exports_ = 0, shrinks_ = 0, forks_ = 0, commits_ = 0, readmits_ = 0;
};

TEST(PageTableDeltaTest, MirrorEqualsExportCsrAfterRandomSteps) {
  int64_t shrinks = 0, forks = 0, commits = 0, readmits = 0;
  for (uint32_t seed = 1; seed <= 16; ++seed) {
    const KvCacheConfig c = Config(1 + seed % 3, 1 + seed % 4, seed % 2 ? 4 : 16,
                                   60 + 40 * static_cast<int32_t>(seed % 5));
    DeltaHarness h(c, seed);
    h.Run(800);
    if (::testing::Test::HasFatalFailure()) return;
    shrinks += h.shrinks();
    forks += h.forks();
    commits += h.commits();
    readmits += h.readmits();
  }
  // Every kind of change must have happened to mean anything.
  EXPECT_GT(shrinks, 100);
  EXPECT_GT(forks, 100);
  EXPECT_GT(commits, 50);
  EXPECT_GT(readmits, 50);
}

}  // namespace
}  // namespace hkv
