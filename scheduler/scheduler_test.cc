// Scheduler tests without a model. FakeWorker keeps a shadow KV pool (the token id stored in
// every slot of every head-block) and, per sequence, what each (layer, KV head) row must hold.
// Each step it checks the Batch against both (shapes, row lengths, block counts, the cached
// contents, positions, token budget, no block in two rows) before writing the step's K/V, and
// samples a hash of everything the sequence's rows hold. Outputs therefore depend on the cache
// the scheduler set up, so "same output" tests catch lost, shared or stale blocks. Blocks may be
// shared (the samples of an n > 1 request), but a step never writes a block another row holds.

#include "scheduler/scheduler.h"

#include <array>
#include <deque>
#include <iostream>
#include <limits>
#include <map>
#include <memory>
#include <random>
#include <set>

#include "common/page_table_mirror.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "headkv/selection.h"

namespace hkv {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

constexpr int32_t kLayers = 2, kHeads = 2, kRows = kLayers * kHeads, kBlockSize = 4;

int32_t CeilDiv(int32_t a, int32_t b) { return (a + b - 1) / b; }

class FakeWorker {
 public:
  explicit FakeWorker(const SchedulerOptions& options = {}) : options_(options) {}

  // A delta step (options.page_table_deltas) is checked as the full CSR its delta rebuilds.
  // A pending token (async scheduling) is the token this sequence's step before sampled.
  BatchResult Execute(const Batch& pending_step) {
    Batch resolved;
    bool has_pending = false;
    for (const SequenceStep& s : pending_step.seqs) {
      has_pending = has_pending || (!s.tokens.empty() && s.tokens[0] == kPendingToken);
    }
    if (has_pending) {
      resolved = pending_step;
      for (SequenceStep& s : resolved.seqs) {
        if (s.tokens.empty() || s.tokens[0] != kPendingToken) continue;
        EXPECT_EQ(s.tokens.size(), 1u);
        EXPECT_TRUE(last_sampled_.contains(s.id)) << "seq " << s.id;
        s.tokens[0] = last_sampled_[s.id];
        ++pending_tokens_;
      }
    }
    const Batch& step = has_pending ? resolved : pending_step;
    BatchResult result = Run(step);
    last_sampled_.clear();
    for (size_t i = 0; i < step.seqs.size(); ++i) {
      if (step.seqs[i].sample) last_sampled_[step.seqs[i].id] = result.seqs[i].token;
    }
    return result;
  }

  int64_t pending_tokens() const { return pending_tokens_; }

  BatchResult Run(const Batch& step) {
    Batch with_csr;
    if (step.kv_delta.has_value()) {
      EXPECT_TRUE(step.kv_indptr.empty() && step.kv_indices.empty());
      const absl::Status applied = tables_.Apply(*step.kv_delta);
      EXPECT_TRUE(applied.ok()) << applied;
      with_csr = step;
      const absl::Status filled = tables_.FillBatchCsr(&with_csr);
      EXPECT_TRUE(filled.ok()) << filled;
      ++delta_steps_;
    }
    const Batch& b = step.kv_delta.has_value() ? with_csr : step;
    CheckShape(b);
    for (const auto& [src, dst] : b.block_copies) blocks_[dst] = blocks_[src];
    for (const auto& [parent, child] : b.forks) seqs_[child] = seqs_[parent];
    for (RequestId id : b.released) released_.insert(id);
    BatchResult result;
    for (size_t i = 0; i < b.seqs.size(); ++i) {
      const SequenceStep& s = b.seqs[i];
      SeqState& st = seqs_[s.id];
      if (s.start_pos == 0) st = SeqState{0, std::vector<std::vector<TokenId>>(kRows)};
      EXPECT_EQ(s.start_pos, st.next_pos) << "seq " << s.id;
      std::vector<std::vector<BlockId>> rows(kRows);
      for (int32_t r = 0; r < kRows; ++r) {
        const int64_t row = static_cast<int64_t>(i) * kRows + r;
        rows[r].assign(b.kv_indices.begin() + b.kv_indptr[row],
                       b.kv_indices.begin() + b.kv_indptr[row + 1]);
        EXPECT_EQ(rows[r].size(), CeilDiv(b.kv_len_after[row], kBlockSize)) << "row " << row;
        EXPECT_EQ(b.kv_len_before[row], st.rows[r].size()) << "seq " << s.id << " row " << r;
        ExpectHolds(rows[r], st.rows[r], std::min<size_t>(b.kv_len_before[row], st.rows[r].size()));
      }
      SequenceResult out;
      out.id = s.id;
      if (s.select && s.start_pos > 0) {
        RunPlain(b, i, rows, &st);  // The last chunk joins the transient rows, then selects.
        RunSelect(b, i, &rows, &st, &out);
      } else if (s.select) {
        RunSelect(b, i, &rows, &st, &out);
      } else {
        RunPlain(b, i, rows, &st);
      }
      st.next_pos = s.start_pos + static_cast<int32_t>(s.tokens.size());
      if (s.sample) out.token = Sample(s, s.sampling.seed, rows, st);
      for (int32_t k = 1; s.sample && k < s.num_samples; ++k) {
        out.extra_tokens.push_back(Sample(s, SampleSeed(s.sampling.seed, k), rows, st));
      }
      result.seqs.push_back(std::move(out));
    }
    return result;
  }

  int64_t delta_steps() const { return delta_steps_; }

 private:
  PageTableMirror tables_;  // delta steps' page tables
  int64_t delta_steps_ = 0;
  struct SeqState {
    int32_t next_pos = 0;
    std::vector<std::vector<TokenId>> rows;  // [kRows] what each row must hold.
  };

  void CheckShape(const Batch& b) {
    EXPECT_EQ(b.num_layers, kLayers);
    EXPECT_EQ(b.num_kv_heads, kHeads);
    EXPECT_EQ(b.block_size, kBlockSize);
    ASSERT_EQ(static_cast<int64_t>(b.kv_indptr.size()), b.num_rows() + 1);
    ASSERT_EQ(static_cast<int64_t>(b.kv_len_before.size()), b.num_rows());
    ASSERT_EQ(static_cast<int64_t>(b.kv_len_after.size()), b.num_rows());
    ASSERT_EQ(b.kv_indptr.back(), static_cast<int32_t>(b.kv_indices.size()));
    EXPECT_LE(static_cast<int32_t>(b.seqs.size()), options_.max_seqs);
    // A block in two rows is shared (never written, see Write); reservations are never shared.
    holders_.clear();
    for (BlockId id : b.kv_indices) ++holders_[id];
    std::set<BlockId> seen(b.kv_indices.begin(), b.kv_indices.end());
    std::set<RequestId> ids;
    int32_t tokens = 0, multi = 0, multi_select = 0;
    for (const SequenceStep& s : b.seqs) {
      EXPECT_TRUE(ids.insert(s.id).second) << "seq " << s.id << " twice";
      for (BlockId id : s.layer_blocks) EXPECT_TRUE(seen.insert(id).second) << "block " << id;
      tokens += s.tokens.size();
      multi += s.tokens.size() > 1;
      multi_select += s.select && s.tokens.size() > 1;
    }
    // Over budget only by a compressed prefill that is the batch's sole multi-token step.
    if (tokens > options_.max_batch_tokens) {
      EXPECT_EQ(multi, 1) << tokens << " tokens over a budget of " << options_.max_batch_tokens;
      EXPECT_EQ(multi_select, 1) << "over budget without a compressed prefill";
    }
  }

  void RunSelect(const Batch& b, size_t i, std::vector<std::vector<BlockId>>* rows, SeqState* st,
                 SequenceResult* out) {
    const SequenceStep& s = b.seqs[i];
    // A chunked prefill's last chunk selects over its rows' whole prompt (all rows hold it).
    const bool chunked = s.start_pos > 0;
    const std::vector<TokenId> prompt = chunked ? st->rows[0] : s.tokens;
    const int32_t n = prompt.size(), w = s.selection.window;
    const bool adaptive = s.selection.capacity.empty();
    EXPECT_GE(static_cast<int32_t>(s.tokens.size()), w) << "the window spans chunks";
    if (chunked) EXPECT_TRUE(s.layer_blocks.empty()) << "a chunked prefill reserves nothing";
    out->kept_per_head.resize(kRows);
    for (int32_t l = 0; l < kLayers; ++l) {
      std::vector<std::vector<float>> scores(kHeads, std::vector<float>(n - w));
      for (int32_t h = 0; h < kHeads; ++h) {
        for (int32_t p = 0; p < n - w; ++p) scores[h][p] = (prompt[p] * (h + 3) + l) % 17;
      }
      std::vector<int32_t> caps(kHeads);
      if (adaptive) {
        caps =
            AdaKvAllocate(scores, s.selection.layer_budget[l], s.selection.adaptive_floor_fraction);
      } else {
        for (int32_t h = 0; h < kHeads; ++h) caps[h] = s.selection.capacity[l * kHeads + h];
      }
      int32_t next = adaptive && !chunked ? s.layer_block_indptr[l] : 0;
      for (int32_t h = 0; h < kHeads; ++h) {
        const int32_t r = l * kHeads + h;
        std::vector<TokenId> kept;
        std::vector<int32_t> positions = SelectKept(scores[h], caps[h], n, w);
        for (int32_t pos : positions) kept.push_back(prompt[pos]);
        out->kept_per_head[r] = kept.size();
        const int64_t row = b.row(i, l, h);
        if (chunked) {
          // Compacted in place: the kept tokens move to the row's first slots, in order.
          for (size_t t = 0; t < positions.size(); ++t) {
            EXPECT_EQ(Read((*rows)[r], positions[t]), kept[t]) << "transient slot lost";
          }
          (*rows)[r].resize(CeilDiv(kept.size(), kBlockSize));
        } else if (adaptive) {
          EXPECT_EQ(b.kv_len_before[row], 0);
          EXPECT_EQ(b.kv_len_after[row], 0);
          const int32_t need = CeilDiv(kept.size(), kBlockSize);
          EXPECT_LE(next + need, s.layer_block_indptr[l + 1]) << "reservation too small";
          if (next + need > s.layer_block_indptr[l + 1]) continue;
          (*rows)[r].assign(s.layer_blocks.begin() + next, s.layer_blocks.begin() + next + need);
          next += need;
        } else {
          EXPECT_EQ(b.kv_len_before[row], 0);
          EXPECT_EQ(b.kv_len_after[row], static_cast<int32_t>(kept.size()));
        }
        for (size_t t = 0; t < kept.size(); ++t) Write((*rows)[r], t, kept[t]);
        st->rows[r] = kept;
      }
    }
  }

  void RunPlain(const Batch& b, size_t i, const std::vector<std::vector<BlockId>>& rows,
                SeqState* st) {
    const SequenceStep& s = b.seqs[i];
    for (int32_t r = 0; r < kRows; ++r) {
      const int64_t row = static_cast<int64_t>(i) * kRows + r;
      EXPECT_EQ(b.kv_len_after[row] - b.kv_len_before[row], static_cast<int32_t>(s.tokens.size()));
      for (size_t t = 0; t < s.tokens.size(); ++t) {
        Write(rows[r], b.kv_len_before[row] + t, s.tokens[t]);
      }
      st->rows[r].insert(st->rows[r].end(), s.tokens.begin(), s.tokens.end());
    }
  }

  // Hash of every row as stored in the shadow pool, as a model would "read" the cache.
  TokenId Sample(const SequenceStep& s, uint64_t seed,
                 const std::vector<std::vector<BlockId>>& rows, const SeqState& st) {
    uint64_t h = 1469598103934665603ULL ^ (s.sample_step * 31 + seed);
    for (int32_t r = 0; r < kRows; ++r) {
      for (size_t slot = 0; slot < st.rows[r].size(); ++slot) {
        h = (h ^ static_cast<uint64_t>(Read(rows[r], slot) + 7)) * 1099511628211ULL;
      }
      h = (h ^ 0xabcd) * 1099511628211ULL;
    }
    return 3 + static_cast<TokenId>(h % 400);
  }

  void ExpectHolds(const std::vector<BlockId>& row, const std::vector<TokenId>& want, size_t n) {
    for (size_t slot = 0; slot < n && slot / kBlockSize < row.size(); ++slot) {
      EXPECT_EQ(Read(row, slot), want[slot]) << "slot " << slot << " was overwritten";
    }
  }
  void Write(const std::vector<BlockId>& row, size_t slot, TokenId token) {
    ASSERT_LT(slot / kBlockSize, row.size());
    EXPECT_LE(holders_[row[slot / kBlockSize]], 1)
        << "write into shared block " << row[slot / kBlockSize];
    blocks_[row[slot / kBlockSize]][slot % kBlockSize] = token;
  }
  TokenId Read(const std::vector<BlockId>& row, size_t slot) {
    auto it = blocks_.find(row[slot / kBlockSize]);
    return it == blocks_.end() ? -1 : it->second[slot % kBlockSize];
  }

  SchedulerOptions options_;
  std::map<RequestId, TokenId> last_sampled_;  // By the last step run.
  int64_t pending_tokens_ = 0;
  std::map<BlockId, std::array<TokenId, kBlockSize>> blocks_;
  std::map<RequestId, SeqState> seqs_;
  std::map<BlockId, int32_t> holders_;  // This step's rows holding each block.

 public:
  std::set<RequestId> released_;  // Every id a batch has released.
};

HeadBudgetPlan Plan(KvPolicyName name, int32_t budget) {
  KvPolicy p;
  p.name = name;
  p.budget = budget;
  if (name == KvPolicyName::kHeadKv) {
    auto scores = std::make_shared<HeadScores>();
    scores->num_layers = kLayers;
    scores->num_heads = kHeads;
    scores->importance = {0.4, 0.1, 0.3, 0.2};
    p.scores = std::move(scores);
  }
  auto plan = HeadBudgetPlanner::Plan(p, kLayers, kHeads);
  EXPECT_TRUE(plan.ok()) << plan.status();
  return *plan;
}

std::unique_ptr<Request> MakeRequest(RequestId id, int32_t prompt_len, int32_t max_tokens,
                                     HeadBudgetPlan plan, int32_t priority = 0) {
  auto r = std::make_unique<Request>();
  r->id = id;
  for (int32_t i = 0; i < prompt_len; ++i) r->prompt.push_back(3 + (id * 31 + i * 7) % 300);
  r->sampling.max_tokens = max_tokens;
  r->eos_ids = {2};
  r->priority = priority;
  r->plan = std::move(plan);
  r->arrival_time = absl::Now();
  return r;
}

KvCacheConfig Config(int32_t blocks) { return {blocks, kBlockSize, kLayers, kHeads}; }

// Checks the pool against the scheduler: exactly the running requests hold blocks, each block's
// reference count is the number of tables holding it, and the pool's free count matches.
void ExpectPoolConsistent(const Scheduler& s, const KvCacheManager& kv, RequestId max_id) {
  std::map<BlockId, int32_t> used;
  int64_t held = 0;
  for (RequestId id = 0; id <= max_id; ++id) {
    const Request* r = s.Find(id);
    const bool running = r != nullptr && r->status == RequestStatus::kRunning;
    EXPECT_EQ(kv.Contains(id), running) << "request " << id;
    if (!kv.Contains(id)) continue;
    int64_t in_tables = 0;
    for (int32_t l = 0; l < kLayers; ++l) {
      for (int32_t h = 0; h < kHeads; ++h) {
        for (BlockId b : kv.Table(id, l, h).blocks) ++used[b];
        in_tables += kv.Table(id, l, h).blocks.size();
      }
    }
    held += kv.SequenceBlocks(id) - in_tables;  // an uncommitted reservation
  }
  for (const auto& [b, n] : used) EXPECT_EQ(kv.pool().ref_count(b), n) << "block " << b;
  // Shared blocks are held once.
  held += static_cast<int64_t>(used.size());
  EXPECT_EQ(held, kv.num_total_blocks() - kv.num_free_blocks());
}

struct RunResult {
  std::map<RequestId, std::vector<TokenId>> tokens;
  std::map<RequestId, RequestOutput> finished;
  std::vector<Batch> batches;
};

// Runs the scheduler until nothing is left, checking the pool after every step.
RunResult RunAll(Scheduler& s, FakeWorker& w, KvCacheManager& kv, RequestId max_id = 100) {
  RunResult out;
  for (int step = 0; step < 100000 && s.HasUnfinished(); ++step) {
    std::optional<Batch> batch = s.Schedule(absl::Now());
    if (!batch.has_value()) continue;  // A step that only preempted.
    for (RequestOutput& o : s.Update(*batch, w.Execute(*batch), absl::Now())) {
      auto& toks = out.tokens[o.id];
      toks.insert(toks.end(), o.new_tokens.begin(), o.new_tokens.end());
      if (o.finished) out.finished[o.id] = o;
    }
    for (RequestOutput& o : s.TakeAborted()) out.finished[o.id] = o;
    ExpectPoolConsistent(s, kv, max_id);
    out.batches.push_back(std::move(*batch));
  }
  EXPECT_FALSE(s.HasUnfinished());
  EXPECT_EQ(kv.num_free_blocks(), kv.num_total_blocks());
  return out;
}

TEST(SchedulerTest, PriorityFirstThenFifo) {
  KvCacheManager kv(Config(1000));
  SchedulerOptions o;
  o.max_seqs = 1;
  Scheduler s(o, &kv);
  FakeWorker w(o);
  ASSERT_TRUE(s.Add(MakeRequest(1, 5, 2, Plan(KvPolicyName::kFull, 0))).ok());
  ASSERT_TRUE(s.Add(MakeRequest(2, 5, 2, Plan(KvPolicyName::kFull, 0), /*priority=*/5)).ok());
  ASSERT_TRUE(s.Add(MakeRequest(3, 5, 2, Plan(KvPolicyName::kFull, 0))).ok());
  ASSERT_TRUE(s.Add(MakeRequest(4, 5, 2, Plan(KvPolicyName::kFull, 0), /*priority=*/5)).ok());
  RunResult run = RunAll(s, w, kv);
  std::vector<RequestId> order;
  for (const Batch& b : run.batches) {
    if (order.empty() || order.back() != b.seqs[0].id) order.push_back(b.seqs[0].id);
  }
  EXPECT_THAT(order, ElementsAre(2, 4, 1, 3));
  EXPECT_EQ(run.finished[1].reason, FinishReason::kLength);
  EXPECT_EQ(run.finished[1].prompt_tokens, 5);
  EXPECT_EQ(run.finished[1].generated_tokens, 2);
  // Kept == full for the full policy: 4 rows x (5 prompt + 1 decoded) positions.
  EXPECT_EQ(run.finished[1].kv_tokens_kept, 4 * 6);
  EXPECT_EQ(run.finished[1].kv_tokens_full, 4 * 6);
}

TEST(SchedulerTest, ChunkedPrefillRespectsTheBudgetAndDoesNotStallDecodes) {
  KvCacheManager kv(Config(1000));
  SchedulerOptions o;
  o.max_batch_tokens = 16;
  Scheduler s(o, &kv);
  FakeWorker w(o);
  ASSERT_TRUE(s.Add(MakeRequest(1, 3, 10, Plan(KvPolicyName::kFull, 0))).ok());
  ASSERT_TRUE(s.Add(MakeRequest(2, 50, 3, Plan(KvPolicyName::kFull, 0))).ok());
  RunResult run = RunAll(s, w, kv);
  int32_t chunks_with_decode = 0;
  for (const Batch& b : run.batches) {
    int32_t tokens = 0;
    for (const SequenceStep& seq : b.seqs) tokens += seq.tokens.size();
    EXPECT_LE(tokens, 16);
    // Request 2's prompt chunk runs beside request 1's decode, in the budget left over.
    if (b.seqs.size() == 2 && b.seqs[0].tokens.size() == 1 && b.seqs[1].tokens.size() > 1) {
      ++chunks_with_decode;
    }
  }
  EXPECT_GE(chunks_with_decode, 3);
  EXPECT_EQ(run.tokens[1].size(), 10u);
  EXPECT_EQ(run.tokens[2].size(), 3u);
  // The long request alone, unchunked, gives the same tokens.
  KvCacheManager kv2(Config(1000));
  Scheduler alone(SchedulerOptions{}, &kv2);
  FakeWorker w2;
  ASSERT_TRUE(alone.Add(MakeRequest(2, 50, 3, Plan(KvPolicyName::kFull, 0))).ok());
  EXPECT_EQ(RunAll(alone, w2, kv2).tokens[2], run.tokens[2]);
}

TEST(SchedulerTest, CompressedPrefillAllocatesExactlyThePlan) {
  for (KvPolicyName policy :
       {KvPolicyName::kSnapKv, KvPolicyName::kPyramidKv, KvPolicyName::kHeadKv}) {
    KvCacheManager kv(Config(1000));
    Scheduler s(SchedulerOptions{}, &kv);
    FakeWorker w;
    HeadBudgetPlan plan = Plan(policy, 16);
    ASSERT_TRUE(s.Add(MakeRequest(1, 100, 3, plan)).ok());
    std::optional<Batch> batch = s.Schedule(absl::Now());
    ASSERT_TRUE(batch.has_value());
    const SequenceStep& step = batch->seqs[0];
    ASSERT_TRUE(step.select);
    EXPECT_TRUE(step.sample);
    EXPECT_EQ(step.tokens.size(), 100u);
    EXPECT_EQ(step.selection.capacity, plan.capacity);
    EXPECT_EQ(step.selection.window, plan.window);
    EXPECT_EQ(kv.RowLengths(1), plan.KeptTokens(100));
    EXPECT_EQ(kv.SequenceBlocks(1), kv.FootprintBlocks(plan.KeptTokens(100)));
    EXPECT_LT(kv.SequenceBlocks(1), kv.FootprintBlocksUniform(100) / 3);
    s.Update(*batch, w.Execute(*batch), absl::Now());
    RunResult run = RunAll(s, w, kv);
    int64_t kept = 0;
    for (int32_t t : plan.KeptTokens(100)) kept += t + 2;  // + 2 decoded tokens per row.
    EXPECT_EQ(run.finished[1].kv_tokens_kept, kept);
    EXPECT_EQ(run.finished[1].kv_tokens_full, 4 * 102);
  }
}

// Steps of request `id` in `run`, in order.
std::vector<const SequenceStep*> StepsOf(const RunResult& run, RequestId id) {
  std::vector<const SequenceStep*> out;
  for (const Batch& b : run.batches) {
    for (const SequenceStep& seq : b.seqs) {
      if (seq.id == id) out.push_back(&seq);
    }
  }
  return out;
}

TEST(SchedulerTest, CompressedPromptPrefillsInChunksInsideTheBudget) {
  for (KvPolicyName policy : {KvPolicyName::kSnapKv, KvPolicyName::kPyramidKv, KvPolicyName::kAdaKv,
                              KvPolicyName::kHeadKv}) {
    SCOPED_TRACE(std::string(PolicyNameString(policy)));
    // Beside request 1, 12 prompt tokens fit one step (one chunk), 25 take two, 100 many.
    for (int32_t prompt : {12, 25, 100}) {
      SCOPED_TRACE(prompt);
      KvCacheManager kv(Config(2000));
      SchedulerOptions o;
      o.max_batch_tokens = 16;
      Scheduler s(o, &kv);
      FakeWorker w(o);
      const HeadBudgetPlan plan = Plan(policy, 10);
      ASSERT_TRUE(s.Add(MakeRequest(1, 3, 12, Plan(KvPolicyName::kFull, 0))).ok());
      ASSERT_TRUE(s.Add(MakeRequest(2, prompt, 4, plan)).ok());
      // Run step by step to look at the pool right after the last chunk.
      RunResult run;
      while (s.HasUnfinished()) {
        std::optional<Batch> batch = s.Schedule(absl::Now());
        ASSERT_TRUE(batch.has_value());
        int32_t tokens = 0;
        for (const SequenceStep& seq : batch->seqs) tokens += seq.tokens.size();
        EXPECT_LE(tokens, 16) << "a compressed prompt no longer exceeds the budget";
        bool last_chunk = false;
        for (const SequenceStep& seq : batch->seqs) last_chunk |= seq.id == 2 && seq.select;
        for (RequestOutput& out : s.Update(*batch, w.Execute(*batch), absl::Now())) {
          run.tokens[out.id].insert(run.tokens[out.id].end(), out.new_tokens.begin(),
                                    out.new_tokens.end());
        }
        if (last_chunk && kv.Contains(2)) {  // The transient blocks went back in that step.
          const std::vector<int32_t> kept = kv.RowLengths(2);
          if (!plan.adaptive) EXPECT_EQ(kept, plan.KeptTokens(prompt));
          EXPECT_EQ(kv.SequenceBlocks(2), kv.FootprintBlocks(kept));
          EXPECT_EQ(kv.num_free_blocks(),
                    2000 - kv.SequenceBlocks(2) - (kv.Contains(1) ? kv.SequenceBlocks(1) : 0));
        }
        run.batches.push_back(std::move(*batch));
      }
      EXPECT_EQ(kv.num_free_blocks(), 2000);
      std::vector<const SequenceStep*> steps = StepsOf(run, 2);
      int32_t prompt_steps = 0;
      for (const SequenceStep* st : steps) {
        if (st->start_pos >= prompt) break;
        ++prompt_steps;
        const bool last = st->start_pos + static_cast<int32_t>(st->tokens.size()) == prompt;
        EXPECT_EQ(st->select, last) << "only the last chunk selects";
        if (last) EXPECT_GE(static_cast<int32_t>(st->tokens.size()), plan.window);
      }
      if (prompt == 12) EXPECT_EQ(prompt_steps, 1);
      if (prompt == 25) EXPECT_EQ(prompt_steps, 2);
      if (prompt == 100) EXPECT_GE(prompt_steps, 7);
      // The one-step compressed prefill (a roomy budget) gives the same tokens.
      KvCacheManager kv2(Config(2000));
      Scheduler alone(SchedulerOptions{}, &kv2);
      FakeWorker w2;
      ASSERT_TRUE(alone.Add(MakeRequest(2, prompt, 4, plan)).ok());
      RunResult one_step = RunAll(alone, w2, kv2);
      ASSERT_EQ(StepsOf(one_step, 2).size(), 4u);
      EXPECT_TRUE(StepsOf(one_step, 2)[0]->select);
      EXPECT_EQ(one_step.tokens[2], run.tokens[2]);
      EXPECT_EQ(run.tokens[1].size(), 12u);
    }
  }
}

TEST(SchedulerTest, CompressedPromptTooBigForThePoolUncompressedStillRunsInOneStep) {
  // 4 rows x ceil(100 / 4) = 100 blocks of transient K/V never fit 60 blocks; the plan does.
  KvCacheManager kv(Config(60));
  SchedulerOptions o;
  o.max_batch_tokens = 16;
  Scheduler s(o, &kv);
  FakeWorker w(o);
  auto big = MakeRequest(2, 100, 4, Plan(KvPolicyName::kSnapKv, 9));
  EXPECT_FALSE(s.ChunksCompressedPrefill(*big));
  EXPECT_LE(s.PeakBlocks(*big), 60);
  ASSERT_TRUE(s.Add(MakeRequest(1, 20, 4, Plan(KvPolicyName::kFull, 0))).ok());
  ASSERT_TRUE(s.Add(std::move(big)).ok());
  RunResult run = RunAll(s, w, kv);
  std::vector<const SequenceStep*> steps = StepsOf(run, 2);
  ASSERT_FALSE(steps.empty());
  EXPECT_TRUE(steps[0]->select);
  EXPECT_EQ(steps[0]->tokens.size(), 100u);  // In one step, although the budget is 16,
  for (const Batch& b : run.batches) {       // and as the step's only prefill.
    if (std::none_of(b.seqs.begin(), b.seqs.end(),
                     [](const SequenceStep& q) { return q.id == 2 && q.select; })) {
      continue;
    }
    for (const SequenceStep& other : b.seqs) {
      if (other.id != 2) EXPECT_EQ(other.tokens.size(), 1u) << "another prefill ran with it";
    }
  }
  // Request 1's 20-token prompt took 2 chunks first: FIFO holds, 2 waited for it.
  EXPECT_EQ(run.batches[1].seqs[0].start_pos, 16);
  EXPECT_EQ(run.tokens[2].size(), 4u);
}

TEST(SchedulerTest, ACompressedPromptWaitsForItsTransientRoomAndNeverFails) {
  // Request 1 (full) prefills 32 tokens (4 rows x 8 blocks of 40), then its first decode takes
  // 4 more blocks. Request 2's 40-token compressed prompt (transient peak: 4 rows x 10 blocks,
  // the whole pool) then finds no room for its first chunk: it waits, neither refused nor
  // failed nor preempted, and runs once request 1 is done.
  KvCacheManager kv(Config(40));
  SchedulerOptions o;
  o.max_batch_tokens = 8;
  Scheduler s(o, &kv);
  FakeWorker w(o);
  ASSERT_TRUE(s.Add(MakeRequest(1, 32, 4, Plan(KvPolicyName::kFull, 0))).ok());
  auto compressed = MakeRequest(2, 40, 3, Plan(KvPolicyName::kHeadKv, 10));
  EXPECT_TRUE(s.ChunksCompressedPrefill(*compressed));
  EXPECT_EQ(s.PeakBlocks(*compressed), 40);  // The transient prompt: 4 rows x 10 blocks.
  ASSERT_TRUE(s.Add(std::move(compressed)).ok());
  RunResult run;
  int32_t steps_waiting_while_1_decodes = 0;
  while (s.HasUnfinished()) {
    std::optional<Batch> batch = s.Schedule(absl::Now());
    ASSERT_TRUE(batch.has_value());
    const Request* r1 = s.Find(1);
    if (r1 != nullptr && r1->num_computed_tokens >= 32 &&
        s.Find(2)->status == RequestStatus::kWaiting) {
      ++steps_waiting_while_1_decodes;
      EXPECT_LT(kv.num_free_blocks(), 8) << "its first chunk would have fit";
    }
    for (RequestOutput& out : s.Update(*batch, w.Execute(*batch), absl::Now())) {
      run.tokens[out.id].insert(run.tokens[out.id].end(), out.new_tokens.begin(),
                                out.new_tokens.end());
      if (out.finished) run.finished[out.id] = out;
    }
    ExpectPoolConsistent(s, kv, 2);
  }
  EXPECT_GE(steps_waiting_while_1_decodes, 2);
  EXPECT_EQ(s.num_preemptions(), 0);
  EXPECT_EQ(run.finished[1].reason, FinishReason::kLength);
  EXPECT_EQ(run.finished[2].reason, FinishReason::kLength);
  EXPECT_EQ(run.finished[2].num_preemptions, 0);
  KvCacheManager kv2(Config(2000));
  Scheduler alone(SchedulerOptions{}, &kv2);
  FakeWorker w2;
  ASSERT_TRUE(alone.Add(MakeRequest(2, 40, 3, Plan(KvPolicyName::kHeadKv, 10))).ok());
  EXPECT_EQ(RunAll(alone, w2, kv2).tokens[2], run.tokens[2]);
}

TEST(SchedulerTest, PreemptionMidPromptFreesTheTransientBlocks) {
  // Request 2 (compressed, low priority) is mid-prompt when request 1's decode runs out of
  // blocks: 2 is preempted, every transient block goes back at once, and it recomputes.
  KvCacheManager kv(Config(44));
  SchedulerOptions o;
  o.max_batch_tokens = 9;
  Scheduler s(o, &kv);
  FakeWorker w(o);
  ASSERT_TRUE(s.Add(MakeRequest(1, 8, 30, Plan(KvPolicyName::kFull, 0), /*priority=*/1)).ok());
  ASSERT_TRUE(s.Add(MakeRequest(2, 40, 3, Plan(KvPolicyName::kSnapKv, 10))).ok());
  bool preempted_mid_prompt = false;
  RunResult run;
  while (s.HasUnfinished()) {
    const Request* r2 = s.Find(2);
    const bool mid_prompt =
        r2 != nullptr && r2->num_computed_tokens > 0 && r2->num_computed_tokens < 40;
    const int64_t before = s.num_preemptions();
    std::optional<Batch> batch = s.Schedule(absl::Now());
    if (s.num_preemptions() > before && mid_prompt) {
      preempted_mid_prompt = true;
      EXPECT_FALSE(kv.Contains(2));
      EXPECT_EQ(s.Find(2)->status, RequestStatus::kPreempted);
      EXPECT_EQ(s.Find(2)->num_computed_tokens, 0);
      EXPECT_EQ(kv.num_free_blocks(), 44 - kv.SequenceBlocks(1));
    }
    if (!batch.has_value()) continue;
    for (RequestOutput& out : s.Update(*batch, w.Execute(*batch), absl::Now())) {
      run.tokens[out.id].insert(run.tokens[out.id].end(), out.new_tokens.begin(),
                                out.new_tokens.end());
    }
    ExpectPoolConsistent(s, kv, 2);
  }
  EXPECT_TRUE(preempted_mid_prompt);
  EXPECT_EQ(kv.num_free_blocks(), 44);
  KvCacheManager kv2(Config(2000));
  Scheduler alone(SchedulerOptions{}, &kv2);
  FakeWorker w2;
  ASSERT_TRUE(alone.Add(MakeRequest(2, 40, 3, Plan(KvPolicyName::kSnapKv, 10))).ok());
  EXPECT_EQ(RunAll(alone, w2, kv2).tokens[2], run.tokens[2]);
  EXPECT_EQ(run.tokens[1].size(), 30u);
}

TEST(SchedulerTest, AChunkedPrefillWhoseResultBreaksThePlanFailsOnlyItsRequest) {
  KvCacheManager kv(Config(1000));
  SchedulerOptions o;
  o.max_batch_tokens = 16;
  Scheduler s(o, &kv);
  FakeWorker w(o);
  ASSERT_TRUE(s.Add(MakeRequest(1, 30, 4, Plan(KvPolicyName::kSnapKv, 10))).ok());
  std::optional<Batch> first = s.Schedule(absl::Now());
  ASSERT_TRUE(first.has_value() && !first->seqs[0].select);
  s.Update(*first, w.Execute(*first), absl::Now());
  std::optional<Batch> last = s.Schedule(absl::Now());
  ASSERT_TRUE(last.has_value() && last->seqs[0].select);
  EXPECT_GT(last->seqs[0].start_pos, 0);
  BatchResult result = w.Execute(*last);
  result.seqs[0].kept_per_head.assign(kRows, 29);  // Not what the plan keeps.
  std::vector<RequestOutput> out = s.Update(*last, result, absl::Now());
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(out[0].reason, FinishReason::kError);
  EXPECT_THAT(out[0].error, HasSubstr("plan"));
  EXPECT_EQ(kv.num_free_blocks(), 1000);
}

TEST(SchedulerTest, AdaptivePrefillReservesThenCommitsWhatTheWorkerKept) {
  KvCacheManager kv(Config(1000));
  Scheduler s(SchedulerOptions{}, &kv);
  FakeWorker w;
  HeadBudgetPlan plan = Plan(KvPolicyName::kAdaKv, 16);
  ASSERT_TRUE(s.Add(MakeRequest(1, 60, 4, plan)).ok());
  std::optional<Batch> batch = s.Schedule(absl::Now());
  ASSERT_TRUE(batch.has_value() && batch->seqs[0].select);
  const SequenceStep& step = batch->seqs[0];
  EXPECT_TRUE(step.selection.capacity.empty());
  EXPECT_EQ(step.selection.layer_budget, plan.layer_budget);
  ASSERT_EQ(step.layer_block_indptr.size(), kLayers + 1u);
  for (int32_t l = 0; l < kLayers; ++l) {
    EXPECT_EQ(step.layer_block_indptr[l + 1] - step.layer_block_indptr[l],
              plan.MaxBlocksPerLayer(l, 60, kBlockSize));
  }
  EXPECT_EQ(batch->kv_indices.size(), 0u);  // Rows stay empty until the commit.
  BatchResult result = w.Execute(*batch);
  s.Update(*batch, result, absl::Now());
  std::vector<int32_t> lengths = kv.RowLengths(1);
  EXPECT_EQ(lengths, result.seqs[0].kept_per_head);
  EXPECT_EQ(kv.SequenceBlocks(1), kv.FootprintBlocks(lengths));  // The rest went back.
  EXPECT_EQ(kv.num_free_blocks(), 1000 - kv.SequenceBlocks(1));
  RunAll(s, w, kv);
}

TEST(SchedulerTest, AdaptiveCommitThatDoesNotFitFailsTheRequestOnly) {
  KvCacheManager kv(Config(1000));
  Scheduler s(SchedulerOptions{}, &kv);
  FakeWorker w;
  ASSERT_TRUE(s.Add(MakeRequest(1, 60, 4, Plan(KvPolicyName::kAdaKv, 16))).ok());
  ASSERT_TRUE(s.Add(MakeRequest(2, 10, 4, Plan(KvPolicyName::kFull, 0))).ok());
  std::optional<Batch> batch = s.Schedule(absl::Now());
  ASSERT_TRUE(batch.has_value());
  BatchResult result = w.Execute(*batch);
  result.seqs[0].kept_per_head.assign(kRows, 60);  // More than the reservation holds.
  std::vector<RequestOutput> out = s.Update(*batch, result, absl::Now());
  ASSERT_EQ(out.size(), 2u);
  EXPECT_TRUE(out[0].finished);
  EXPECT_EQ(out[0].reason, FinishReason::kError);
  EXPECT_THAT(out[0].error, HasSubstr("reserved"));
  EXPECT_FALSE(out[1].finished);
  EXPECT_FALSE(kv.Contains(1));
  RunResult run = RunAll(s, w, kv);
  EXPECT_EQ(run.finished[2].reason, FinishReason::kLength);
}

TEST(SchedulerTest, PreemptionRecomputesExactly) {
  for (KvPolicyName policy : {KvPolicyName::kFull, KvPolicyName::kSnapKv, KvPolicyName::kPyramidKv,
                              KvPolicyName::kAdaKv, KvPolicyName::kHeadKv}) {
    SCOPED_TRACE(std::string(PolicyNameString(policy)));
    std::map<RequestId, std::vector<TokenId>> reference;
    for (int32_t blocks : {4000, 90}) {
      KvCacheManager kv(Config(blocks));
      SchedulerOptions o;
      o.max_batch_tokens = 24;
      Scheduler s(o, &kv);
      FakeWorker w(o);
      for (RequestId id = 1; id <= 6; ++id) {
        ASSERT_TRUE(s.Add(MakeRequest(id, 30 + id, 40, Plan(policy, 16), id % 2)).ok());
      }
      RunResult run = RunAll(s, w, kv);
      for (RequestId id = 1; id <= 6; ++id) EXPECT_EQ(run.tokens[id].size(), 40u);
      if (blocks == 4000) {
        EXPECT_EQ(s.num_preemptions(), 0);
        reference = run.tokens;
        continue;
      }
      EXPECT_GT(s.num_preemptions(), 0) << "the small pool must force preemption";
      EXPECT_EQ(run.tokens, reference);
      // A recompute restarts at position 0; a compressed one re-runs its select step without
      // sampling, then its generated tokens as one plain chunk.
      int32_t restarts = 0;
      std::map<RequestId, int32_t> generated;
      for (const Batch& b : run.batches) {
        for (const SequenceStep& seq : b.seqs) {
          if (seq.start_pos == 0 && generated[seq.id] > 0) {
            ++restarts;
            EXPECT_FALSE(seq.sample && seq.select);
            EXPECT_EQ(seq.sample_step, generated[seq.id]);
          }
          if (seq.sample) generated[seq.id] = seq.sample_step + 1;
        }
      }
      EXPECT_GT(restarts, 0);
    }
  }
}

TEST(SchedulerTest, PreemptsLowestPriorityThenNewest) {
  // Three 4-token prompts take 4 rows x 1 block each; the first decode needs a second block
  // per row, so 16 blocks hold only two of them past their prefill.
  for (int32_t newest_priority : {0, 1}) {
    KvCacheManager kv(Config(16));
    Scheduler s(SchedulerOptions{}, &kv);
    FakeWorker w;
    ASSERT_TRUE(s.Add(MakeRequest(1, 4, 3, Plan(KvPolicyName::kFull, 0), 1)).ok());
    ASSERT_TRUE(s.Add(MakeRequest(2, 4, 3, Plan(KvPolicyName::kFull, 0), 0)).ok());
    ASSERT_TRUE(s.Add(MakeRequest(3, 4, 3, Plan(KvPolicyName::kFull, 0), newest_priority)).ok());
    std::optional<Batch> prefill = s.Schedule(absl::Now());
    ASSERT_EQ(prefill->seqs.size(), 3u);
    s.Update(*prefill, w.Execute(*prefill), absl::Now());
    std::optional<Batch> decode = s.Schedule(absl::Now());
    ASSERT_TRUE(decode.has_value());
    const RequestId victim = newest_priority == 0 ? 3 : 2;
    EXPECT_EQ(s.num_preemptions(), 1);
    EXPECT_EQ(s.Find(victim)->status, RequestStatus::kPreempted);
    EXPECT_FALSE(kv.Contains(victim));
    EXPECT_EQ(decode->seqs.size(), 2u);
    for (const SequenceStep& seq : decode->seqs) EXPECT_NE(seq.id, victim);
    s.Update(*decode, w.Execute(*decode), absl::Now());
    RunResult run = RunAll(s, w, kv);
    EXPECT_EQ(run.finished[victim].num_preemptions, 1);
    EXPECT_EQ(run.tokens[victim].size(), 2u);  // Plus the one from the first step.
  }
}

TEST(SchedulerTest, NothingIsAdmittedInAStepThatPreempted) {
  KvCacheManager kv(Config(20));
  Scheduler s(SchedulerOptions{}, &kv);
  FakeWorker w;
  ASSERT_TRUE(s.Add(MakeRequest(1, 4, 3, Plan(KvPolicyName::kFull, 0), 1)).ok());
  ASSERT_TRUE(s.Add(MakeRequest(2, 4, 3, Plan(KvPolicyName::kFull, 0))).ok());
  ASSERT_TRUE(s.Add(MakeRequest(3, 8, 3, Plan(KvPolicyName::kFull, 0))).ok());
  std::optional<Batch> prefill = s.Schedule(absl::Now());  // 4 + 4 + 8 blocks.
  s.Update(*prefill, w.Execute(*prefill), absl::Now());
  ASSERT_TRUE(s.Add(MakeRequest(4, 1, 3, Plan(KvPolicyName::kFull, 0), 2)).ok());
  // 1 and 2 each need 4 more blocks: 3 goes, which leaves 4 free, enough for request 4.
  std::optional<Batch> decode = s.Schedule(absl::Now());
  EXPECT_EQ(s.num_preemptions(), 1);
  EXPECT_EQ(kv.num_free_blocks(), 4);
  ASSERT_EQ(decode->seqs.size(), 2u);  // But 4 waits a step, so 3's blocks serve the running.
  s.Update(*decode, w.Execute(*decode), absl::Now());
  std::optional<Batch> next = s.Schedule(absl::Now());
  ASSERT_EQ(next->seqs.size(), 3u);
  EXPECT_EQ(next->seqs[2].id, 4);
  s.Update(*next, w.Execute(*next), absl::Now());
  RunAll(s, w, kv);
}

TEST(SchedulerTest, AbortAndDeadlineFreeBlocks) {
  KvCacheManager kv(Config(1000));
  Scheduler s(SchedulerOptions{}, &kv);
  FakeWorker w;
  ASSERT_TRUE(s.Add(MakeRequest(1, 10, 100, Plan(KvPolicyName::kFull, 0))).ok());
  auto late = MakeRequest(2, 30, 100, Plan(KvPolicyName::kSnapKv, 9));
  const absl::Time t0 = absl::Now();
  late->deadline = t0 + absl::Seconds(1);
  ASSERT_TRUE(s.Add(std::move(late)).ok());
  std::optional<Batch> batch = s.Schedule(t0);
  s.Update(*batch, w.Execute(*batch), t0);
  EXPECT_TRUE(kv.Contains(1) && kv.Contains(2));
  s.Abort(1, FinishReason::kAborted);
  EXPECT_FALSE(kv.Contains(1));         // At once.
  s.Abort(1, FinishReason::kAborted);   // Finished: no-op.
  s.Abort(77, FinishReason::kAborted);  // Unknown: no-op.
  EXPECT_FALSE(s.Schedule(t0 + absl::Seconds(2)).has_value());
  std::vector<RequestOutput> aborted = s.TakeAborted();
  ASSERT_EQ(aborted.size(), 2u);
  EXPECT_EQ(aborted[0].id, 1);
  EXPECT_EQ(aborted[0].reason, FinishReason::kAborted);
  EXPECT_EQ(aborted[0].kv_tokens_kept, 4 * 10);
  EXPECT_EQ(aborted[1].id, 2);
  EXPECT_EQ(aborted[1].reason, FinishReason::kDeadline);
  EXPECT_EQ(aborted[1].kv_tokens_kept, 4 * 9);  // Compressed: the budget per row.
  EXPECT_EQ(aborted[1].kv_tokens_full, 4 * 30);
  EXPECT_TRUE(aborted[0].finished && aborted[1].finished);
  EXPECT_TRUE(s.TakeAborted().empty());
  EXPECT_FALSE(s.HasUnfinished());
  EXPECT_EQ(kv.num_free_blocks(), 1000);
}

TEST(SchedulerTest, AbortWhileWaitingOrDuringAStep) {
  KvCacheManager kv(Config(1000));
  SchedulerOptions o;
  o.max_seqs = 1;
  Scheduler s(o, &kv);
  FakeWorker w(o);
  ASSERT_TRUE(s.Add(MakeRequest(1, 10, 5, Plan(KvPolicyName::kFull, 0))).ok());
  ASSERT_TRUE(s.Add(MakeRequest(2, 10, 5, Plan(KvPolicyName::kFull, 0))).ok());
  std::optional<Batch> batch = s.Schedule(absl::Now());
  s.Abort(2, FinishReason::kAborted);  // Waiting.
  s.Abort(1, FinishReason::kAborted);  // In the batch being run.
  EXPECT_EQ(s.Update(*batch, w.Execute(*batch), absl::Now()).size(), 0u);
  EXPECT_EQ(s.TakeAborted().size(), 2u);
  EXPECT_FALSE(s.HasUnfinished());
  EXPECT_EQ(kv.num_free_blocks(), 1000);
}

TEST(SchedulerTest, AddRejectsWhatCanNeverRun) {
  KvCacheManager kv(Config(50));
  SchedulerOptions o;
  o.max_queue = 2;
  Scheduler s(o, &kv);
  // 4 rows x ceil(300 / 4) blocks can never fit 50 blocks.
  absl::Status status = s.Add(MakeRequest(9, 290, 10, Plan(KvPolicyName::kFull, 0)));
  EXPECT_EQ(status.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(status.message(), HasSubstr("pool has 50"));
  // Huge max_tokens does not overflow.
  status =
      s.Add(MakeRequest(9, 5, std::numeric_limits<int32_t>::max(), Plan(KvPolicyName::kFull, 0)));
  EXPECT_EQ(status.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(s.Add(MakeRequest(9, 0, 5, Plan(KvPolicyName::kFull, 0))).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(s.Add(MakeRequest(9, 5, 0, Plan(KvPolicyName::kFull, 0))).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(s.Add(nullptr).code(), absl::StatusCode::kInvalidArgument);
  KvPolicy wide;
  wide.name = KvPolicyName::kSnapKv;
  wide.budget = 16;
  status = s.Add(MakeRequest(9, 20, 5, *HeadBudgetPlanner::Plan(wide, kLayers, 2 * kHeads)));
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("kv_head"));
  // Compressed, the long prompt fits: it costs what the plan keeps.
  EXPECT_TRUE(s.Add(MakeRequest(10, 290, 10, Plan(KvPolicyName::kSnapKv, 12))).ok());
  EXPECT_EQ(s.Add(MakeRequest(10, 5, 2, Plan(KvPolicyName::kFull, 0))).code(),
            absl::StatusCode::kAlreadyExists);
  EXPECT_TRUE(s.Add(MakeRequest(11, 5, 2, Plan(KvPolicyName::kFull, 0))).ok());
  status = s.Add(MakeRequest(12, 5, 2, Plan(KvPolicyName::kFull, 0)));
  EXPECT_EQ(status.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(status.message(), HasSubstr("queue is full"));
  FakeWorker w;
  RunResult run = RunAll(s, w, kv);  // What was admitted still finishes.
  EXPECT_EQ(run.tokens[10].size(), 10u);
  EXPECT_EQ(run.tokens[11].size(), 2u);
}

TEST(SchedulerTest, PeakBlocksBoundsTheAdaptiveReservationAndGrowth) {
  KvCacheManager kv(Config(1000));
  Scheduler s(SchedulerOptions{}, &kv);
  HeadBudgetPlan plan = Plan(KvPolicyName::kAdaKv, 16);
  std::unique_ptr<Request> r = MakeRequest(1, 60, 30, plan);
  int64_t reserved = 0;
  for (int32_t l = 0; l < kLayers; ++l) reserved += plan.MaxBlocksPerLayer(l, 60, kBlockSize);
  // Each layer keeps 2 x 8 + 16 tokens; + 30 per row is at most (32 + 2 x 33) / 4 blocks.
  // Its chunked prefill holds the prompt's 4 rows x 15 blocks before the selection.
  EXPECT_EQ(s.PeakBlocks(*r), std::max<int64_t>({reserved, kLayers * ((32 + 2 * 33) / 4), 4 * 15}));
  EXPECT_EQ(s.PeakBlocks(*MakeRequest(2, 60, 30, Plan(KvPolicyName::kFull, 0))), 4 * 23);
}

TEST(SchedulerTest, EosAndStopTokensFinishEarly) {
  auto run_one = [](std::unique_ptr<Request> r) {
    KvCacheManager kv(Config(1000));
    Scheduler s(SchedulerOptions{}, &kv);
    FakeWorker w;
    const RequestId id = r->id;
    EXPECT_TRUE(s.Add(std::move(r)).ok());
    RunResult run = RunAll(s, w, kv);
    return std::make_pair(run.tokens[id], run.finished[id]);
  };
  auto [probe, probe_out] = run_one(MakeRequest(1, 6, 30, Plan(KvPolicyName::kFull, 0)));
  ASSERT_EQ(probe.size(), 30u);
  EXPECT_EQ(probe_out.reason, FinishReason::kLength);
  auto stop = MakeRequest(1, 6, 30, Plan(KvPolicyName::kFull, 0));
  stop->sampling.stop_token_ids = {probe[4]};
  auto [stopped, stop_out] = run_one(std::move(stop));
  EXPECT_EQ(stop_out.reason, FinishReason::kStop);
  EXPECT_EQ(stopped, std::vector<TokenId>(probe.begin(), probe.begin() + 5));
  auto eos = MakeRequest(1, 6, 30, Plan(KvPolicyName::kFull, 0));
  eos->eos_ids = {probe[2]};
  auto [eos_tokens, eos_out] = run_one(std::move(eos));
  EXPECT_EQ(eos_out.reason, FinishReason::kEos);
  EXPECT_EQ(eos_tokens.size(), 3u);
  auto ignored = MakeRequest(1, 6, 30, Plan(KvPolicyName::kFull, 0));
  ignored->eos_ids = {probe[2]};
  ignored->sampling.ignore_eos = true;
  EXPECT_EQ(run_one(std::move(ignored)).first, probe);
}

// Async scheduling: the step planned ahead runs an in-flight decode's token as kPendingToken
// one position on; a request the step in flight ends (EOS) ran one step too many, and that
// step's result is dropped with its slots not counted as kept; max_tokens and a compressed
// prefill in flight sit the step out; a pool too short for the step ahead stops it there
// (no preemption) until the next Schedule().
TEST(SchedulerTest, ScheduleAheadRunsPendingTokensAndNeverPreempts) {
  KvCacheManager kv(Config(1000));
  Scheduler s(SchedulerOptions{}, &kv);
  FakeWorker w;
  EXPECT_FALSE(s.ScheduleAhead(absl::Now()).has_value()) << "nothing in flight";
  ASSERT_TRUE(s.Add(MakeRequest(1, 6, 30, Plan(KvPolicyName::kFull, 0))).ok());
  ASSERT_TRUE(s.Add(MakeRequest(2, 6, 2, Plan(KvPolicyName::kFull, 0))).ok());
  ASSERT_TRUE(s.Add(MakeRequest(3, 20, 5, Plan(KvPolicyName::kSnapKv, 12))).ok());
  std::optional<Batch> first = s.Schedule(absl::Now());
  ASSERT_TRUE(first.has_value() && first->seqs.size() == 3);
  BatchResult first_result = w.Execute(*first);
  // Ahead: 1 and 2 decode their pending first token; 3's compressed prefill is in flight.
  std::optional<Batch> ahead = s.ScheduleAhead(absl::Now());
  ASSERT_TRUE(ahead.has_value());
  ASSERT_EQ(ahead->seqs.size(), 2u);
  for (const SequenceStep& st : ahead->seqs) {
    EXPECT_THAT(st.tokens, ElementsAre(kPendingToken));
    EXPECT_EQ(st.start_pos, 6);
    EXPECT_EQ(st.sample_step, 1);
  }
  EXPECT_FALSE(s.ScheduleAhead(absl::Now()).has_value()) << "two steps in flight";
  BatchResult ahead_result = w.Execute(*ahead);
  std::vector<RequestOutput> out = s.Update(*first, first_result, absl::Now());
  ASSERT_EQ(out.size(), 3u);
  // Next ahead: request 2 has 1 token and its pending second is its last (max_tokens 2).
  std::optional<Batch> third = s.ScheduleAhead(absl::Now());
  ASSERT_TRUE(third.has_value());
  std::vector<RequestId> ids;
  for (const SequenceStep& st : third->seqs) ids.push_back(st.id);
  EXPECT_THAT(ids, ElementsAre(1, 3));
  EXPECT_THAT(third->seqs[0].tokens, ElementsAre(kPendingToken));
  EXPECT_EQ(third->seqs[1].tokens.size(), 1u) << "3's first decode, its token known";
  BatchResult third_result = w.Execute(*third);
  out = s.Update(*ahead, ahead_result, absl::Now());
  ASSERT_EQ(out.size(), 2u);
  EXPECT_TRUE(out[1].finished);
  EXPECT_EQ(out[1].reason, FinishReason::kLength);
  out = s.Update(*third, third_result, absl::Now());
  EXPECT_EQ(out.size(), 2u);
  // EOS: request 1 ends on the token of the step in flight; the step ahead of it is dropped.
  const Request* r1 = s.Find(1);
  ASSERT_NE(r1, nullptr);
  const size_t generated = r1->output.size();
  std::optional<Batch> a = s.Schedule(absl::Now());
  ASSERT_TRUE(a.has_value());
  BatchResult a_result = w.Execute(*a);
  std::optional<Batch> b = s.ScheduleAhead(absl::Now());
  ASSERT_TRUE(b.has_value());
  BatchResult b_result = w.Execute(*b);
  // Make request 1's token of step `a` an EOS.
  for (size_t i = 0; i < a->seqs.size(); ++i) {
    if (a->seqs[i].id == 1) a_result.seqs[i].token = 2;
  }
  out = s.Update(*a, a_result, absl::Now());
  bool ended = false;
  for (const RequestOutput& o : out) {
    if (o.id != 1) continue;
    ended = o.finished;
    EXPECT_EQ(o.reason, FinishReason::kEos);
    EXPECT_EQ(o.generated_tokens, static_cast<int32_t>(generated + 1));
    // 4 rows of 6 + generated + 1 tokens, not the slot of the step ahead.
    EXPECT_EQ(o.kv_tokens_kept, 4 * (6 + static_cast<int64_t>(generated)));
  }
  EXPECT_TRUE(ended);
  out = s.Update(*b, b_result, absl::Now());
  for (const RequestOutput& o : out) EXPECT_NE(o.id, 1) << "its extra step is dropped";
  RunResult rest = RunAll(s, w, kv);
  EXPECT_EQ(kv.num_free_blocks(), kv.num_total_blocks());
}

TEST(SchedulerTest, ScheduleAheadStopsShortOfBlocksWithoutPreempting) {
  // 2 sequences x 4 rows: 8 blocks hold 4 tokens each; the fifth token needs 8 more.
  KvCacheManager kv(Config(12));
  Scheduler s(SchedulerOptions{}, &kv);
  FakeWorker w;
  ASSERT_TRUE(s.Add(MakeRequest(1, 3, 5, Plan(KvPolicyName::kFull, 0))).ok());
  ASSERT_TRUE(s.Add(MakeRequest(2, 3, 5, Plan(KvPolicyName::kFull, 0))).ok());
  std::optional<Batch> first = s.Schedule(absl::Now());
  ASSERT_TRUE(first.has_value());
  BatchResult first_result = w.Execute(*first);
  std::optional<Batch> ahead = s.ScheduleAhead(absl::Now());  // position 3: same blocks
  ASSERT_TRUE(ahead.has_value());
  ASSERT_EQ(ahead->seqs.size(), 2u);
  BatchResult ahead_result = w.Execute(*ahead);
  s.Update(*first, first_result, absl::Now());
  // Position 4 needs a new block per row: 8 for both, 4 free: request 1 fits, 2 does not.
  std::optional<Batch> short_step = s.ScheduleAhead(absl::Now());
  ASSERT_TRUE(short_step.has_value());
  EXPECT_EQ(short_step->seqs.size(), 1u);
  EXPECT_EQ(s.num_preemptions(), 0);
  BatchResult short_result = w.Execute(*short_step);
  s.Update(*ahead, ahead_result, absl::Now());
  EXPECT_FALSE(s.ScheduleAhead(absl::Now()).has_value()) << "short: Schedule() decides next";
  s.Update(*short_step, short_result, absl::Now());
  std::optional<Batch> sync = s.Schedule(absl::Now());  // may preempt now
  ASSERT_TRUE(sync.has_value());
  s.Update(*sync, w.Execute(*sync), absl::Now());
  EXPECT_EQ(s.num_preemptions(), 1);
  RunAll(s, w, kv);
}

TEST(SchedulerTest, AStepWithoutUpdateIsRecomputed) {
  KvCacheManager kv(Config(1000));
  Scheduler s(SchedulerOptions{}, &kv);
  FakeWorker w;
  ASSERT_TRUE(s.Add(MakeRequest(1, 20, 5, Plan(KvPolicyName::kAdaKv, 12))).ok());
  ASSERT_TRUE(s.Add(MakeRequest(2, 20, 5, Plan(KvPolicyName::kFull, 0))).ok());
  std::optional<Batch> lost = s.Schedule(absl::Now());  // The worker fails: no Update().
  ASSERT_TRUE(lost.has_value());
  std::optional<Batch> again = s.Schedule(absl::Now());
  ASSERT_TRUE(again.has_value());
  ASSERT_EQ(again->seqs.size(), 2u);
  EXPECT_EQ(again->seqs[0].start_pos, 0);
  EXPECT_TRUE(again->seqs[0].select);
  EXPECT_EQ(again->seqs[1].start_pos, 0);
  s.Update(*again, w.Execute(*again), absl::Now());
  RunResult run = RunAll(s, w, kv);
  EXPECT_EQ(run.tokens[1].size(), 4u);  // + 1 from the step above.
}

TEST(SchedulerTest, AStepWithoutUpdateRestartsThePageTableDeltas) {
  KvCacheManager kv(Config(1000));
  SchedulerOptions o;
  o.page_table_deltas = true;
  Scheduler s(o, &kv);
  FakeWorker w;
  ASSERT_TRUE(s.Add(MakeRequest(1, 20, 8, Plan(KvPolicyName::kHeadKv, 12))).ok());
  ASSERT_TRUE(s.Add(MakeRequest(2, 20, 8, Plan(KvPolicyName::kFull, 0))).ok());
  std::map<RequestId, std::vector<TokenId>> tokens;
  auto keep = [&](const std::vector<RequestOutput>& outs) {
    for (const RequestOutput& out : outs) {
      tokens[out.id].insert(tokens[out.id].end(), out.new_tokens.begin(), out.new_tokens.end());
    }
  };
  std::optional<Batch> first = s.Schedule(absl::Now());
  ASSERT_TRUE(first.has_value());
  ASSERT_TRUE(first->kv_delta.has_value());
  EXPECT_FALSE(first->kv_delta->reset);
  keep(s.Update(*first, w.Execute(*first), absl::Now()));
  std::optional<Batch> lost = s.Schedule(absl::Now());  // its delta never reaches the worker
  ASSERT_TRUE(lost.has_value());
  std::optional<Batch> again = s.Schedule(absl::Now());
  ASSERT_TRUE(again.has_value());
  ASSERT_TRUE(again->kv_delta.has_value());
  EXPECT_TRUE(again->kv_delta->reset);
  for (const SequenceTableDelta& d : again->kv_delta->seqs) EXPECT_TRUE(d.fresh) << d.id;
  keep(s.Update(*again, w.Execute(*again), absl::Now()));
  RunResult run = RunAll(s, w, kv);
  for (auto& [id, t] : run.tokens) tokens[id].insert(tokens[id].end(), t.begin(), t.end());
  EXPECT_GT(w.delta_steps(), 3);
  // The same outputs as a run that never lost a step, with full CSR steps.
  KvCacheManager kv2(Config(1000));
  Scheduler s2(SchedulerOptions{}, &kv2);
  FakeWorker w2;
  ASSERT_TRUE(s2.Add(MakeRequest(1, 20, 8, Plan(KvPolicyName::kHeadKv, 12))).ok());
  ASSERT_TRUE(s2.Add(MakeRequest(2, 20, 8, Plan(KvPolicyName::kFull, 0))).ok());
  RunResult clean = RunAll(s2, w2, kv2);
  EXPECT_EQ(w2.delta_steps(), 0);
  for (RequestId id : {1, 2}) {
    EXPECT_EQ(tokens[id].size(), 8u) << id;
    EXPECT_EQ(tokens[id], clean.tokens[id]) << id;
  }
}

TEST(SchedulerTest, MalformedResultsFailOnlyTheirRequests) {
  KvCacheManager kv(Config(1000));
  Scheduler s(SchedulerOptions{}, &kv);
  FakeWorker w;
  for (RequestId id = 1; id <= 3; ++id) {
    ASSERT_TRUE(s.Add(MakeRequest(id, 8, 5, Plan(KvPolicyName::kFull, 0))).ok());
  }
  std::optional<Batch> batch = s.Schedule(absl::Now());
  BatchResult result = w.Execute(*batch);
  result.seqs[0].token = -1;  // No token sampled.
  result.seqs.pop_back();     // No result at all.
  std::vector<RequestOutput> out = s.Update(*batch, result, absl::Now());
  ASSERT_EQ(out.size(), 3u);
  EXPECT_EQ(out[0].reason, FinishReason::kError);
  EXPECT_THAT(out[0].error, HasSubstr("no token"));
  EXPECT_FALSE(out[1].finished);
  EXPECT_EQ(out[2].reason, FinishReason::kError);
  RunResult run = RunAll(s, w, kv);
  EXPECT_EQ(run.finished[2].reason, FinishReason::kLength);
}

TEST(SchedulerTest, RandomizedStressKeepsThePoolConsistentAndOutputsExact) {
  std::mt19937 rng(11);
  const KvPolicyName policies[] = {KvPolicyName::kFull, KvPolicyName::kSnapKv,
                                   KvPolicyName::kPyramidKv, KvPolicyName::kAdaKv,
                                   KvPolicyName::kHeadKv};
  int64_t preemptions = 0, compared = 0, deadlines = 0, aborts = 0, compressed = 0, forked = 0,
          copies_run = 0, delta_steps = 0, ahead_steps = 0, pending_tokens = 0;
  std::map<int32_t, int64_t> selects_by_chunks;  // Compressed prefills by chunks (3: 3 or more).
  for (int trial = 0; trial < 16; ++trial) {
    SCOPED_TRACE(trial);
    const int32_t blocks = 60 + rng() % 150;
    KvCacheManager kv(Config(blocks));
    SchedulerOptions o;
    o.max_batch_tokens = 8 + rng() % 64;
    o.max_seqs = 1 + rng() % 16;
    o.max_queue = 4 + rng() % 20;
    o.page_table_deltas = trial % 2 == 1;  // the worker rebuilds every table from the deltas
    // Async scheduling: step N+1 planned and run before step N's Update (the fake worker runs
    // each step as it is planned, as the CPU worker does at Launch).
    const bool async = trial % 4 >= 2;
    std::deque<std::pair<Batch, BatchResult>> in_flight;
    Scheduler s(o, &kv);
    FakeWorker w(o);
    std::map<RequestId, std::unique_ptr<Request>> copies;  // To rerun alone.
    std::set<RequestId> cut_short;                         // Aborted or past their deadline.
    std::map<RequestId, std::vector<TokenId>> tokens;
    std::map<RequestId, int32_t> prompt_steps;  // Steps of the current compressed prefill.
    absl::Time now = absl::FromUnixSeconds(1000);
    RequestId next = 1;
    for (int step = 0; step < 300 || s.HasUnfinished(); ++step) {
      ASSERT_LT(step, 20000);
      now += absl::Milliseconds(10);
      if (step < 300 && rng() % 2 == 0) {
        auto r = MakeRequest(next, 1 + rng() % 60, 1 + rng() % 40,
                             Plan(policies[rng() % 5], 9 + rng() % 20), rng() % 3);
        if (rng() % 8 == 0) r->deadline = now + absl::Milliseconds(rng() % 500);
        if (rng() % 4 == 0) r->sampling.n = 2 + rng() % 3;  // samples sharing the prompt
        const int32_t n = r->sampling.n;
        auto copy = std::make_unique<Request>(*r);
        if (s.Add(std::move(r)).ok()) copies[next] = std::move(copy);
        next += n;
        forked += n > 1;
      }
      if (rng() % 12 == 0) s.Abort(1 + rng() % next, FinishReason::kAborted);
      auto count_chunks = [&](const Batch& b) {
        for (const SequenceStep& seq : b.seqs) {
          const Request* r = s.Find(seq.id);
          if (r == nullptr || !r->compresses() || seq.start_pos >= r->num_prompt_tokens()) continue;
          prompt_steps[seq.id] = seq.start_pos == 0 ? 1 : prompt_steps[seq.id] + 1;
          if (seq.select) ++selects_by_chunks[std::min(prompt_steps[seq.id], 3)];
        }
      };
      auto update = [&](const Batch& b, const BatchResult& result) {
        for (RequestOutput& out : s.Update(b, result, now)) {
          tokens[out.id].insert(tokens[out.id].end(), out.new_tokens.begin(), out.new_tokens.end());
          EXPECT_NE(out.reason, FinishReason::kError) << out.error;
        }
      };
      std::optional<Batch> batch;
      if (!async) {
        batch = s.Schedule(now);
        if (batch.has_value()) {
          count_chunks(*batch);
          update(*batch, w.Execute(*batch));
        }
      } else {
        if (in_flight.empty()) {
          batch = s.Schedule(now);
          if (batch.has_value()) {
            count_chunks(*batch);
            BatchResult result = w.Execute(*batch);
            in_flight.emplace_back(*batch, std::move(result));
          }
        }
        if (!in_flight.empty()) {
          std::optional<Batch> ahead = s.ScheduleAhead(now);
          if (ahead.has_value()) {
            ++ahead_steps;
            count_chunks(*ahead);
            BatchResult result = w.Execute(*ahead);
            in_flight.emplace_back(*ahead, std::move(result));
            if (!batch.has_value()) batch = *ahead;
          }
          update(in_flight.front().first, in_flight.front().second);
          in_flight.pop_front();
        }
      }
      for (RequestOutput& out : s.TakeAborted()) {
        cut_short.insert(out.id);
        for (int32_t k = 1; k <= out.unforked_samples; ++k) cut_short.insert(out.id + k);
        (out.reason == FinishReason::kDeadline ? deadlines : aborts)++;
      }
      if (batch.has_value()) copies_run += batch->block_copies.size();
      if (in_flight.empty()) ExpectPoolConsistent(s, kv, next);
      EXPECT_LE(s.num_running(), o.max_seqs);
    }
    EXPECT_TRUE(in_flight.empty());
    EXPECT_EQ(kv.num_free_blocks(), blocks);
    pending_tokens += w.pending_tokens();
    preemptions += s.num_preemptions();
    delta_steps += w.delta_steps();
    // Whatever ran to the end produced what it produces alone in a roomy pool.
    for (auto& [id, copy] : copies) {
      const int32_t n = copy->sampling.n;
      KvCacheManager big(Config(4000));
      Scheduler alone(SchedulerOptions{}, &big);
      FakeWorker w2;
      copy->deadline = absl::InfiniteFuture();
      const bool compresses = copy->compresses();
      ASSERT_TRUE(alone.Add(std::move(copy)).ok());
      RunResult run = RunAll(alone, w2, big, id + n);
      for (RequestId k = id; k < id + n; ++k) {
        if (cut_short.contains(k)) continue;
        compressed += compresses;
        ++compared;
        EXPECT_EQ(run.tokens[k], tokens[k]) << "request " << id << " sample " << k - id;
      }
    }
  }
  std::cout << delta_steps << " steps as page-table deltas; " << preemptions << " preemptions, "
            << aborts << " aborts, " << deadlines << " deadlines; " << compared
            << " outputs compared (" << compressed
            << " compressed); compressed prefills in 1 / 2 / 3+ chunks: " << selects_by_chunks[1]
            << " / " << selects_by_chunks[2] << " / " << selects_by_chunks[3] << "; " << forked
            << " with n > 1, " << copies_run << " block copies; " << ahead_steps
            << " steps planned ahead, " << pending_tokens << " pending tokens\n";
  EXPECT_GT(selects_by_chunks[1], 20);
  EXPECT_GT(selects_by_chunks[2], 20);
  EXPECT_GT(selects_by_chunks[3], 20);
  EXPECT_GT(preemptions, 50);
  EXPECT_GT(aborts, 20);
  EXPECT_GT(deadlines, 5);
  EXPECT_GT(compressed, 100);
  EXPECT_GT(forked, 50);
  EXPECT_GT(copies_run, 50);
  EXPECT_GT(delta_steps, 1000);
  EXPECT_GT(ahead_steps, 1000);
  EXPECT_GT(pending_tokens, 5000);
}

TEST(SchedulerTest, SamplesShareThePromptAndCopyOnlyThePartialBlock) {
  KvCacheManager kv(Config(1000));
  Scheduler s(SchedulerOptions{}, &kv);
  FakeWorker w;
  // 10 prompt tokens: two full blocks and a partial one per row.
  auto r = MakeRequest(10, 10, 6, Plan(KvPolicyName::kFull, 0));
  r->sampling.n = 4;
  r->sampling.temperature = 1.0f;
  r->sampling.seed = 77;
  ASSERT_TRUE(s.Add(std::move(r)).ok());
  std::optional<Batch> prefill = s.Schedule(absl::Now());
  ASSERT_TRUE(prefill.has_value());
  ASSERT_EQ(prefill->seqs.size(), 1u);
  EXPECT_EQ(prefill->seqs[0].num_samples, 4);
  std::vector<RequestOutput> first = s.Update(*prefill, w.Execute(*prefill), absl::Now());
  ASSERT_EQ(first.size(), 4u);
  std::set<int32_t> indices;
  for (const RequestOutput& o : first) {
    indices.insert(o.sample_index);
    EXPECT_EQ(o.id, 10 + o.sample_index);
    EXPECT_EQ(o.new_tokens.size(), 1u);
  }
  EXPECT_EQ(indices, (std::set<int32_t>{0, 1, 2, 3}));
  // The prompt's 3 blocks per row are held once, by 4 tables.
  EXPECT_EQ(kv.num_total_blocks() - kv.num_free_blocks(), kRows * 3);
  EXPECT_EQ(kv.pool().ref_count(kv.Table(13, 0, 0).blocks[0]), 4);
  // The first decode: every sample but the last to write copies the partial block of each row.
  std::optional<Batch> decode = s.Schedule(absl::Now());
  ASSERT_TRUE(decode.has_value());
  EXPECT_EQ(decode->seqs.size(), 4u);
  EXPECT_EQ(decode->block_copies.size(), 3u * kRows);
  EXPECT_EQ(decode->forks.size(), 3u);
  for (const SequenceStep& st : decode->seqs) EXPECT_EQ(st.num_samples, 1);
  EXPECT_EQ(kv.num_total_blocks() - kv.num_free_blocks(), kRows * (2 + 4));
  s.Update(*decode, w.Execute(*decode), absl::Now());
  RunResult rest = RunAll(s, w, kv, 20);
  for (RequestId id = 10; id < 14; ++id) {
    EXPECT_EQ(rest.finished[id].reason, FinishReason::kLength) << id;
    EXPECT_EQ(rest.finished[id].sample_index, id - 10);
  }
  // The next batch tells workers to drop the samples' state.
  ASSERT_TRUE(s.Add(MakeRequest(30, 3, 1, Plan(KvPolicyName::kFull, 0))).ok());
  std::optional<Batch> next = s.Schedule(absl::Now());
  ASSERT_TRUE(next.has_value());
  std::set<RequestId> released(next->released.begin(), next->released.end());
  EXPECT_EQ(released, (std::set<RequestId>{10, 11, 12, 13}));
}

TEST(SchedulerTest, SamplesEndWithTheirParentWhenItEndsBeforeTheFork) {
  KvCacheManager kv(Config(1000));
  Scheduler s(SchedulerOptions{}, &kv);
  auto r = MakeRequest(20, 10, 6, Plan(KvPolicyName::kFull, 0));
  r->sampling.n = 3;
  ASSERT_TRUE(s.Add(std::move(r)).ok());
  s.Abort(20, FinishReason::kAborted);
  std::vector<RequestOutput> out = s.TakeAborted();
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(out[0].unforked_samples, 2);
  // Ids id + 1 .. id + n - 1 are the samples': a request there is refused while it lives.
  auto a = MakeRequest(30, 4, 2, Plan(KvPolicyName::kFull, 0));
  a->sampling.n = 3;
  ASSERT_TRUE(s.Add(std::move(a)).ok());
  auto b = MakeRequest(29, 4, 2, Plan(KvPolicyName::kFull, 0));
  b->sampling.n = 2;  // 29, 30: 30 is live
  EXPECT_EQ(s.Add(std::move(b)).code(), absl::StatusCode::kAlreadyExists);
}

}  // namespace
}  // namespace hkv
