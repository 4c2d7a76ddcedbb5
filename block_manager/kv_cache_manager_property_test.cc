// Property test: random sequences of append / free / reserve / commit / fork, with prompt
// footprints drawn from random HeadKV plans, keep the block manager's invariants. A model of
// the blocks' contents (every written token a unique value; queued copies applied before the
// writes, as a step does) checks that sharing and copy-on-write never let one sequence see
// another's tokens.

#include <algorithm>
#include <map>
#include <memory>
#include <numeric>
#include <random>
#include <iostream>
#include <set>
#include <vector>

#include "block_manager/kv_cache_manager.h"
#include "gtest/gtest.h"
#include "headkv/head_budget_planner.h"
#include "headkv/selection.h"

namespace hkv {
namespace {

struct Pending {
  HeadBudgetPlan plan;
  int32_t n = 0;
  KvCacheManager::LayerReservation res;
};

class Harness {
 public:
  Harness(const KvCacheConfig& config, uint32_t seed) : m_(config), cfg_(config), rng_(seed) {}

  void Step() {
    const int op = Uniform(0, 99);
    if (op < 30) {
      NewSequence();
    } else if (op < 42) {
      CommitOne();
    } else if (op < 72) {
      GrowOne();
    } else if (op < 80) {
      ForkOne();
    } else {
      FreeOne();
    }
    CheckInvariants();
  }

  void FreeAll() {
    for (const auto& [id, len] : lengths_) m_.Free(id);
    for (const auto& [id, p] : pending_) m_.Free(id);
    lengths_.clear();
    expect_.clear();
    pending_.clear();
    CheckInvariants();
    EXPECT_EQ(m_.num_free_blocks(), m_.num_total_blocks());
  }

  int64_t rejections() const { return rejections_; }
  int64_t copies() const { return copies_; }
  int64_t adaptive_commits() const { return adaptive_commits_; }

 private:
  int Uniform(int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng_); }

  HeadBudgetPlan RandomPlan() {
    KvPolicy p;
    p.name = static_cast<KvPolicyName>(Uniform(0, 4));
    p.budget = Uniform(p.window + 1, 64);
    p.beta = 1.01 + Uniform(0, 3) * 0.3;
    p.granularity = Granularity::kQueryHead;
    if (p.name == KvPolicyName::kHeadKv) {
      auto s = std::make_shared<HeadScores>();
      s->num_layers = cfg_.num_layers;
      s->num_heads = cfg_.num_kv_heads;
      for (int i = 0; i < s->num_layers * s->num_heads; ++i) s->importance.push_back(Uniform(0, 9));
      if (std::accumulate(s->importance.begin(), s->importance.end(), 0.0) == 0) {
        s->importance[0] = 1;
      }
      const double sum = std::accumulate(s->importance.begin(), s->importance.end(), 0.0);
      for (double& v : s->importance) v /= sum;
      p.scores = s;
    }
    auto plan = HeadBudgetPlanner::Plan(p, cfg_.num_layers, cfg_.num_kv_heads);
    EXPECT_TRUE(plan.ok()) << plan.status();
    return *plan;
  }

  // Takes a snapshot of everything the manager exposes.
  std::vector<int64_t> State() const {
    std::vector<RequestId> ids;
    for (const auto& [id, len] : lengths_) ids.push_back(id);
    const KvCsr csr = m_.ExportCsr(ids);
    std::vector<int64_t> s = {m_.num_free_blocks()};
    for (BlockId b = 0; b < m_.num_total_blocks(); ++b) s.push_back(m_.pool().held(b));
    s.insert(s.end(), csr.indptr.begin(), csr.indptr.end());
    s.insert(s.end(), csr.indices.begin(), csr.indices.end());
    s.insert(s.end(), csr.num_tokens.begin(), csr.num_tokens.end());
    return s;
  }

  // What a step does after Append: the queued copies, then the new tokens' K/V.
  void RunCopies() {
    for (const auto& [src, dst] : m_.TakeBlockCopies()) {
      content_[dst] = content_[src];
      ++copies_;
    }
  }
  void WriteRows(RequestId id) {
    std::vector<std::vector<int64_t>>& rows = expect_[id];
    rows.resize(m_.num_rows_per_seq());
    for (int32_t r = 0; r < m_.num_rows_per_seq(); ++r) {
      const BlockTable& t = m_.Table(id, r / cfg_.num_kv_heads, r % cfg_.num_kv_heads);
      for (int32_t pos = static_cast<int32_t>(rows[r].size()); pos < t.num_tokens; ++pos) {
        std::vector<int64_t>& block = content_[t.blocks[pos / cfg_.block_size]];
        block.resize(cfg_.block_size, -1);
        block[pos % cfg_.block_size] = next_value_;
        rows[r].push_back(next_value_++);
      }
    }
  }
  void CheckContents(RequestId id) const {
    const std::vector<std::vector<int64_t>>& rows = expect_.at(id);
    for (int32_t r = 0; r < m_.num_rows_per_seq(); ++r) {
      const BlockTable& t = m_.Table(id, r / cfg_.num_kv_heads, r % cfg_.num_kv_heads);
      ASSERT_EQ(static_cast<int32_t>(rows[r].size()), t.num_tokens);
      for (int32_t pos = 0; pos < t.num_tokens; ++pos) {
        const std::vector<int64_t>& block = content_.at(t.blocks[pos / cfg_.block_size]);
        ASSERT_EQ(block[pos % cfg_.block_size], rows[r][pos])
            << "sequence " << id << " row " << r << " position " << pos;
      }
    }
  }

  // Forks a committed sequence; the fork then holds nothing new.
  void ForkOne() {
    if (lengths_.empty()) return;
    auto it = std::next(lengths_.begin(), Uniform(0, lengths_.size() - 1));
    const RequestId id = next_id_++;
    const int32_t free_before = m_.num_free_blocks();
    ASSERT_TRUE(m_.Fork(it->first, id).ok());
    EXPECT_FALSE(m_.Fork(it->first, id).ok());     // dst exists
    EXPECT_EQ(m_.num_free_blocks(), free_before);  // shared: counted once
    lengths_[id] = it->second;
    expect_[id] = expect_[it->first];
  }

  void NewSequence() {
    const RequestId id = next_id_++;
    const HeadBudgetPlan plan = RandomPlan();
    const int32_t n = Uniform(1, 160);
    const auto before = State();
    if (plan.adaptive && plan.compresses(n)) {
      std::vector<int32_t> blocks(cfg_.num_layers);
      for (int l = 0; l < cfg_.num_layers; ++l) {
        blocks[l] = plan.MaxBlocksPerLayer(l, n, cfg_.block_size);
      }
      const int64_t need = std::accumulate(blocks.begin(), blocks.end(), int64_t{0});
      auto res = m_.ReserveLayers(id, blocks);
      EXPECT_EQ(res.has_value(), need <= before[0]);
      if (!res.has_value()) {
        ++rejections_;
        EXPECT_EQ(State(), before);
        EXPECT_FALSE(m_.Contains(id));
        return;
      }
      pending_[id] = Pending{plan, n, *res};
      return;
    }
    const std::vector<int32_t> kept = plan.KeptTokens(n);
    const int64_t need = m_.FootprintBlocks(kept);
    EXPECT_EQ(m_.NewBlocksNeeded(id, kept), need);
    const bool ok = m_.Append(id, kept);
    EXPECT_EQ(ok, need <= before[0]);
    if (!ok) {
      ++rejections_;
      EXPECT_EQ(State(), before);
      EXPECT_FALSE(m_.Contains(id));
      return;
    }
    lengths_[id] = kept;
    RunCopies();
    WriteRows(id);
  }

  void CommitOne() {
    if (pending_.empty()) return;
    auto it = std::next(pending_.begin(), Uniform(0, pending_.size() - 1));
    const Pending& p = it->second;
    const int32_t H = cfg_.num_kv_heads, w = p.plan.window;
    // An over-sized commit (every head keeps everything) is rejected unchanged when it does
    // not fit the reservation.
    if (Uniform(0, 2) == 0) {
      const auto before = State();
      const absl::Status st =
          m_.CommitAdaptive(it->first, std::vector<int32_t>(p.plan.num_layers * H, p.n));
      if (!st.ok()) {
        EXPECT_EQ(State(), before);
      } else {
        lengths_[it->first] = std::vector<int32_t>(p.plan.num_layers * H, p.n);
        WriteRows(it->first);
        pending_.erase(it);
        return;
      }
    }
    std::vector<int32_t> kept;
    std::uniform_real_distribution<float> score(0.0f, 1.0f);
    for (int l = 0; l < p.plan.num_layers; ++l) {
      std::vector<std::vector<float>> scores(H, std::vector<float>(p.n - w));
      for (auto& h : scores)
        for (float& x : h) x = score(rng_) * score(rng_);
      for (int32_t cap : AdaKvAllocate(scores, p.plan.layer_budget[l], 0.2f)) {
        kept.push_back(cap + w);
      }
    }
    // The plan's block bound always fits what Ada-KV can choose.
    const absl::Status st = m_.CommitAdaptive(it->first, kept);
    ASSERT_TRUE(st.ok()) << st;
    ++adaptive_commits_;
    lengths_[it->first] = kept;
    WriteRows(it->first);
    pending_.erase(it);
  }

  void GrowOne() {
    if (lengths_.empty()) return;
    auto it = std::next(lengths_.begin(), Uniform(0, lengths_.size() - 1));
    std::vector<int32_t> grow(m_.num_rows_per_seq(), 1);  // decode
    if (Uniform(0, 1)) {
      for (int32_t& g : grow) g = Uniform(0, 20);
    }
    const auto before = State();
    const int64_t need = m_.NewBlocksNeeded(it->first, grow);
    const bool ok = m_.Append(it->first, grow);
    EXPECT_EQ(ok, need <= before[0]);
    if (!ok) {
      ++rejections_;
      EXPECT_EQ(State(), before);
      return;
    }
    EXPECT_EQ(m_.num_free_blocks(), before[0] - need);
    for (int r = 0; r < m_.num_rows_per_seq(); ++r) it->second[r] += grow[r];
    RunCopies();
    WriteRows(it->first);
  }

  void FreeOne() {
    const size_t total = lengths_.size() + pending_.size();
    if (total == 0) return;
    const size_t k = Uniform(0, total - 1);
    if (k < lengths_.size()) {
      auto it = std::next(lengths_.begin(), k);
      m_.Free(it->first);
      expect_.erase(it->first);
      lengths_.erase(it);
    } else {
      auto it = std::next(pending_.begin(), k - lengths_.size());
      m_.Free(it->first);
      pending_.erase(it);
    }
  }

  void CheckInvariants() {
    std::vector<int32_t> holders(m_.num_total_blocks(), 0);
    int64_t held = 0;
    for (const auto& [id, len] : lengths_) {
      ASSERT_TRUE(m_.Contains(id));
      EXPECT_EQ(m_.RowLengths(id), len);
      std::set<BlockId> own;
      int64_t count = 0;
      for (int l = 0; l < cfg_.num_layers; ++l) {
        for (int h = 0; h < cfg_.num_kv_heads; ++h) {
          const BlockTable& t = m_.Table(id, l, h);
          EXPECT_EQ(t.blocks.size(), size_t(BlockTable::BlocksFor(t.num_tokens, cfg_.block_size)));
          for (BlockId b : t.blocks) ++holders[b];
          own.insert(t.blocks.begin(), t.blocks.end());
          count += t.blocks.size();
        }
      }
      EXPECT_EQ(own.size(), size_t(count)) << "a block appears twice in sequence " << id;
      EXPECT_EQ(m_.SequenceBlocks(id), count);
      held += count;
      CheckContents(id);
    }
    for (const auto& [id, p] : pending_) {
      for (BlockId b : p.res.blocks) ++holders[b];
      held += p.res.blocks.size();
      EXPECT_EQ(m_.SequenceBlocks(id), int64_t(p.res.blocks.size()));
    }
    int32_t free_blocks = 0;
    for (BlockId b = 0; b < m_.num_total_blocks(); ++b) {
      // Reference counts are exact: one per table (or reservation) listing the block.
      ASSERT_EQ(m_.pool().ref_count(b), holders[b]) << "block " << b;
      free_blocks += holders[b] == 0;
    }
    EXPECT_EQ(m_.num_free_blocks(), free_blocks);
    EXPECT_EQ(m_.pool().num_used() + m_.num_free_blocks(), m_.num_total_blocks());
    const auto per_layer = m_.BlocksPerLayer();
    EXPECT_EQ(std::accumulate(per_layer.begin(), per_layer.end(), int64_t{0}), held);
  }

  KvCacheManager m_;
  KvCacheConfig cfg_;
  std::mt19937 rng_;
  RequestId next_id_ = 1;
  std::map<BlockId, std::vector<int64_t>> content_;  // what each block holds (token values)
  std::map<RequestId, std::vector<std::vector<int64_t>>> expect_;  // per row, in order
  int64_t next_value_ = 0;
  int64_t copies_ = 0;
  std::map<RequestId, std::vector<int32_t>> lengths_;  // committed sequences: row lengths
  std::map<RequestId, Pending> pending_;               // uncommitted adaptive reservations
  int64_t rejections_ = 0;
  int64_t adaptive_commits_ = 0;
};

TEST(KvCacheManagerPropertyTest, RandomOperationsKeepInvariants) {
  int64_t rejections = 0, commits = 0, copies = 0;
  for (uint32_t seed = 1; seed <= 24; ++seed) {
    KvCacheConfig c;
    c.block_size = seed % 3 == 0 ? 16 : 4;
    c.num_layers = 1 + seed % 4;
    c.num_kv_heads = 1 + seed % 3;
    c.num_blocks = 40 + 30 * (seed % 7);
    Harness h(c, seed);
    for (int step = 0; step < 1500 && !::testing::Test::HasFatalFailure(); ++step) h.Step();
    h.FreeAll();
    rejections += h.rejections();
    commits += h.adaptive_commits();
    copies += h.copies();
  }
  // The runs must exercise both exhaustion and the adaptive path to mean anything.
  std::cout << "rejections " << rejections << " adaptive commits " << commits << "\n";
  EXPECT_GT(rejections, 100);
  EXPECT_GT(commits, 20);
  EXPECT_GT(copies, 100);  // and copy-on-write
}

}  // namespace
}  // namespace hkv
