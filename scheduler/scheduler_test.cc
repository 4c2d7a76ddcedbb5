// Scheduler tests without a model: a fake worker keeps a shadow KV (the token id written into
// each slot) and samples a hash of what its row (layer 0, head 0) holds, so outputs depend on
// the cache contents the scheduler set up.

#include "scheduler/scheduler.h"

#include <map>
#include <random>
#include <set>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "headkv/selection.h"

namespace hkv {
namespace {

constexpr int32_t kLayers = 2, kHeads = 2, kBlockSize = 4, kWindow = 8;

class FakeWorker {
 public:
  BatchResult Execute(const Batch& b) {
    EXPECT_EQ(b.num_rows() + 1, static_cast<int64_t>(b.kv_indptr.size()));
    for (const auto& [src, dst] : b.block_copies) blocks_[dst] = blocks_[src];
    // No block appears in two rows of one batch.
    std::set<BlockId> seen;
    for (BlockId id : b.kv_indices) EXPECT_TRUE(seen.insert(id).second) << "block " << id;
    BatchResult result;
    for (size_t i = 0; i < b.seqs.size(); ++i) {
      const SequenceStep& s = b.seqs[i];
      SequenceResult out;
      out.id = s.id;
      const int32_t n = s.tokens.size();
      if (s.select) {
        EXPECT_EQ(s.start_pos, 0);
        out.kept_per_head.resize(kLayers * kHeads);
        for (int32_t l = 0; l < kLayers; ++l) {
          std::vector<int32_t> caps(kHeads);
          if (s.selection.capacity.empty()) {
            std::vector<std::vector<float>> scores(kHeads, std::vector<float>(n - kWindow));
            for (int32_t h = 0; h < kHeads; ++h) {
              for (int32_t p = 0; p < n - kWindow; ++p) scores[h][p] = (s.tokens[p] * (h + 3)) % 17;
            }
            caps = AdaKvAllocate(scores, s.selection.layer_budget[l], 0.2f);
          } else {
            for (int32_t h = 0; h < kHeads; ++h) caps[h] = s.selection.capacity[l * kHeads + h];
          }
          int32_t next = s.selection.capacity.empty() ? s.layer_block_indptr[l] : 0;
          for (int32_t h = 0; h < kHeads; ++h) {
            const int32_t kept = std::min(caps[h], n - kWindow) + kWindow;
            out.kept_per_head[l * kHeads + h] = kept;
            std::vector<BlockId> row;
            if (s.selection.capacity.empty()) {
              const int32_t need = (kept + kBlockSize - 1) / kBlockSize;
              EXPECT_LE(next + need, s.layer_block_indptr[l + 1]);
              row.assign(s.layer_blocks.begin() + next, s.layer_blocks.begin() + next + need);
              next += need;
            } else {
              const int64_t r = b.row(i, l, h);
              EXPECT_EQ(b.kv_len_before[r], 0);
              EXPECT_EQ(b.kv_len_after[r], kept);
              row.assign(b.kv_indices.begin() + b.kv_indptr[r],
                         b.kv_indices.begin() + b.kv_indptr[r + 1]);
            }
            // Keep the last `kept` prompt tokens.
            for (int32_t t = 0; t < kept; ++t) Write(row, t, s.tokens[n - kept + t]);
          }
        }
      } else {
        for (int32_t l = 0; l < kLayers; ++l) {
          for (int32_t h = 0; h < kHeads; ++h) {
            const int64_t r = b.row(i, l, h);
            EXPECT_EQ(b.kv_len_after[r] - b.kv_len_before[r], n) << "row " << r;
            EXPECT_LE(b.kv_len_after[r], (b.kv_indptr[r + 1] - b.kv_indptr[r]) * kBlockSize);
            std::vector<BlockId> row(b.kv_indices.begin() + b.kv_indptr[r],
                                     b.kv_indices.begin() + b.kv_indptr[r + 1]);
            for (int32_t t = 0; t < n; ++t) Write(row, b.kv_len_before[r] + t, s.tokens[t]);
          }
        }
      }
      if (s.sample) out.token = Sample(b, i, s, out);
      result.seqs.push_back(std::move(out));
    }
    return result;
  }

 private:
  void Write(const std::vector<BlockId>& row, int32_t slot, TokenId token) {
    auto& block = blocks_[row[slot / kBlockSize]];
    block.resize(kBlockSize, -1);
    block[slot % kBlockSize] = token;
  }
  TokenId Sample(const Batch& b, size_t i, const SequenceStep& s, const SequenceResult& out) {
    // Hash of row (layer 0, head 0)'s cache, as a model would "read" it.
    uint64_t h = 1469598103934665603ULL ^ s.sample_step;
    if (!s.select || !s.selection.capacity.empty()) {
      const int64_t r = b.row(i, 0, 0);
      for (int32_t slot = 0; slot < b.kv_len_after[r]; ++slot) {
        const BlockId id = b.kv_indices[b.kv_indptr[r] + slot / kBlockSize];
        h = (h ^ static_cast<uint64_t>(blocks_[id][slot % kBlockSize] + 7)) * 1099511628211ULL;
      }
    } else {
      h = (h ^ out.kept_per_head[0]) * 1099511628211ULL;
    }
    return 3 + static_cast<TokenId>(h % 400);
  }
  std::map<BlockId, std::vector<TokenId>> blocks_;
};

HeadBudgetPlan Plan(KvPolicyName name, int32_t budget) {
  KvPolicy p;
  p.name = name;
  p.budget = budget;
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

// Runs the scheduler to completion; returns each request's output tokens.
std::map<RequestId, std::vector<TokenId>> RunAll(Scheduler& s, FakeWorker& w,
                                                 std::vector<Batch>* batches = nullptr) {
  std::map<RequestId, std::vector<TokenId>> out;
  for (int step = 0; step < 100000 && s.HasUnfinished(); ++step) {
    auto batch = s.Schedule(absl::Now());
    if (!batch.has_value()) break;
    auto outputs = s.Update(*batch, w.Execute(*batch), absl::Now());
    for (const auto& o : outputs) {
      out[o.id].insert(out[o.id].end(), o.new_tokens.begin(), o.new_tokens.end());
    }
    if (batches != nullptr) batches->push_back(std::move(*batch));
  }
  return out;
}

KvCacheConfig Config(int32_t blocks) { return {blocks, kBlockSize, kLayers, kHeads}; }

TEST(SchedulerTest, PriorityFirstThenFifo) {
  KvCacheManager kv(Config(1000));
  SchedulerOptions o;
  o.max_seqs = 1;
  Scheduler s(o, &kv);
  FakeWorker w;
  ASSERT_TRUE(s.Add(MakeRequest(1, 5, 2, Plan(KvPolicyName::kFull, 0))).ok());
  ASSERT_TRUE(s.Add(MakeRequest(2, 5, 2, Plan(KvPolicyName::kFull, 0), /*priority=*/5)).ok());
  ASSERT_TRUE(s.Add(MakeRequest(3, 5, 2, Plan(KvPolicyName::kFull, 0))).ok());
  std::vector<Batch> batches;
  RunAll(s, w, &batches);
  std::vector<RequestId> order;
  for (const Batch& b : batches) {
    if (order.empty() || order.back() != b.seqs[0].id) order.push_back(b.seqs[0].id);
  }
  EXPECT_THAT(order, ::testing::ElementsAre(2, 1, 3));
  EXPECT_EQ(kv.num_free_blocks(), 1000);
}

TEST(SchedulerTest, ChunkedPrefillRespectsTheTokenBudget) {
  KvCacheManager kv(Config(1000));
  SchedulerOptions o;
  o.max_batch_tokens = 16;
  Scheduler s(o, &kv);
  FakeWorker w;
  ASSERT_TRUE(s.Add(MakeRequest(1, 50, 3, Plan(KvPolicyName::kFull, 0))).ok());
  ASSERT_TRUE(s.Add(MakeRequest(2, 3, 10, Plan(KvPolicyName::kFull, 0))).ok());
  std::vector<Batch> batches;
  auto out = RunAll(s, w, &batches);
  for (const Batch& b : batches) {
    int32_t tokens = 0;
    for (const auto& seq : b.seqs) tokens += seq.tokens.size();
    EXPECT_LE(tokens, 16);
  }
  EXPECT_EQ(out[1].size(), 3u);
  EXPECT_EQ(out[2].size(), 10u);
  // The same request alone, unchunked, gives the same tokens.
  KvCacheManager kv2(Config(1000));
  Scheduler alone(SchedulerOptions{}, &kv2);
  FakeWorker w2;
  ASSERT_TRUE(alone.Add(MakeRequest(1, 50, 3, Plan(KvPolicyName::kFull, 0))).ok());
  EXPECT_EQ(RunAll(alone, w2)[1], out[1]);
}

TEST(SchedulerTest, CompressedPrefillAllocatesExactlyThePlan) {
  KvCacheManager kv(Config(1000));
  Scheduler s(SchedulerOptions{}, &kv);
  FakeWorker w;
  HeadBudgetPlan plan = Plan(KvPolicyName::kPyramidKv, 16);
  ASSERT_TRUE(s.Add(MakeRequest(1, 100, 1, plan)).ok());
  auto batch = s.Schedule(absl::Now());
  ASSERT_TRUE(batch.has_value());
  ASSERT_TRUE(batch->seqs[0].select);
  EXPECT_EQ(batch->seqs[0].tokens.size(), 100u);
  EXPECT_EQ(kv.SequenceBlocks(1), kv.FootprintBlocks(plan.KeptTokens(100)));
  EXPECT_LT(kv.SequenceBlocks(1), kv.FootprintBlocksUniform(100));
  s.Update(*batch, w.Execute(*batch), absl::Now());
  EXPECT_FALSE(s.HasUnfinished());
  EXPECT_EQ(kv.num_free_blocks(), 1000);
}

TEST(SchedulerTest, AdaptivePrefillCommitsAndFreesTheRest) {
  KvCacheManager kv(Config(1000));
  Scheduler s(SchedulerOptions{}, &kv);
  FakeWorker w;
  ASSERT_TRUE(s.Add(MakeRequest(1, 60, 4, Plan(KvPolicyName::kAdaKv, 16))).ok());
  auto batch = s.Schedule(absl::Now());
  ASSERT_TRUE(batch.has_value() && batch->seqs[0].select);
  EXPECT_TRUE(batch->seqs[0].selection.capacity.empty());
  auto result = w.Execute(*batch);
  s.Update(*batch, result, absl::Now());
  std::vector<int32_t> lengths = kv.RowLengths(1);
  EXPECT_EQ(lengths, result.seqs[0].kept_per_head);
  EXPECT_EQ(kv.SequenceBlocks(1), kv.FootprintBlocks(lengths));
  RunAll(s, w);
  EXPECT_EQ(kv.num_free_blocks(), 1000);
}

TEST(SchedulerTest, PreemptionRecomputesExactly) {
  for (KvPolicyName policy : {KvPolicyName::kFull, KvPolicyName::kSnapKv, KvPolicyName::kAdaKv}) {
    std::map<RequestId, std::vector<TokenId>> reference, pressured;
    int64_t preemptions = 0;
    for (int32_t blocks : {4000, 100}) {
      KvCacheManager kv(Config(blocks));
      Scheduler s(SchedulerOptions{}, &kv);
      FakeWorker w;
      for (RequestId id = 1; id <= 6; ++id) {
        ASSERT_TRUE(s.Add(MakeRequest(id, 30 + id, 40, Plan(policy, 16), id % 2)).ok());
      }
      auto out = RunAll(s, w);
      EXPECT_FALSE(s.HasUnfinished());
      EXPECT_EQ(kv.num_free_blocks(), blocks);
      (blocks == 4000 ? reference : pressured) = out;
      if (blocks == 100) preemptions = s.num_preemptions();
    }
    EXPECT_GT(preemptions, 0) << "the small pool must force preemption";
    EXPECT_EQ(reference, pressured);
  }
}

TEST(SchedulerTest, AbortAndDeadlineFreeBlocks) {
  KvCacheManager kv(Config(1000));
  Scheduler s(SchedulerOptions{}, &kv);
  FakeWorker w;
  ASSERT_TRUE(s.Add(MakeRequest(1, 10, 100, Plan(KvPolicyName::kFull, 0))).ok());
  auto late = MakeRequest(2, 10, 100, Plan(KvPolicyName::kSnapKv, 9));
  late->deadline = absl::Now() + absl::Milliseconds(1);
  ASSERT_TRUE(s.Add(std::move(late)).ok());
  auto batch = s.Schedule(absl::Now());
  s.Update(*batch, w.Execute(*batch), absl::Now());
  EXPECT_LT(kv.num_free_blocks(), 1000);
  s.Abort(1, FinishReason::kAborted);
  absl::SleepFor(absl::Milliseconds(2));
  EXPECT_FALSE(s.Schedule(absl::Now()).has_value());
  auto aborted = s.TakeAborted();
  ASSERT_EQ(aborted.size(), 2u);
  EXPECT_EQ(aborted[0].reason, FinishReason::kAborted);
  EXPECT_EQ(aborted[1].reason, FinishReason::kDeadline);
  EXPECT_TRUE(aborted[0].finished);
  EXPECT_FALSE(s.HasUnfinished());
  EXPECT_EQ(kv.num_free_blocks(), 1000);
}

TEST(SchedulerTest, FullQueueAndNeverFittingRequestsAreResourceExhausted) {
  KvCacheManager kv(Config(50));
  SchedulerOptions o;
  o.max_queue = 2;
  Scheduler s(o, &kv);
  // 4 rows x ceil(300 / 4) blocks can never fit 50 blocks.
  auto status = s.Add(MakeRequest(9, 290, 10, Plan(KvPolicyName::kFull, 0)));
  EXPECT_EQ(status.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(std::string(status.message()), ::testing::HasSubstr("pool"));
  // Compressed, the same prompt fits.
  EXPECT_TRUE(s.Add(MakeRequest(10, 290, 10, Plan(KvPolicyName::kSnapKv, 12))).ok());
  EXPECT_TRUE(s.Add(MakeRequest(11, 5, 2, Plan(KvPolicyName::kFull, 0))).ok());
  status = s.Add(MakeRequest(12, 5, 2, Plan(KvPolicyName::kFull, 0)));
  EXPECT_EQ(status.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(std::string(status.message()), ::testing::HasSubstr("queue"));
  FakeWorker w;
  auto out = RunAll(s, w);
  EXPECT_EQ(out[10].size(), 10u);
  EXPECT_EQ(out[11].size(), 2u);
}

TEST(SchedulerTest, EosAndStopTokensFinishEarly) {
  KvCacheManager kv(Config(1000));
  Scheduler s(SchedulerOptions{}, &kv);
  FakeWorker w;
  auto probe = MakeRequest(1, 6, 30, Plan(KvPolicyName::kFull, 0));
  ASSERT_TRUE(s.Add(std::move(probe)).ok());
  auto out = RunAll(s, w);
  ASSERT_EQ(out[1].size(), 30u);
  // Make the 5th token a stop token, and the 3rd an EOS for another run.
  KvCacheManager kv2(Config(1000));
  Scheduler s2(SchedulerOptions{}, &kv2);
  FakeWorker w2;
  auto stop = MakeRequest(1, 6, 30, Plan(KvPolicyName::kFull, 0));
  stop->sampling.stop_token_ids = {out[1][4]};
  ASSERT_TRUE(s2.Add(std::move(stop)).ok());
  auto b = s2.Schedule(absl::Now());
  std::vector<RequestOutput> last;
  while (b.has_value()) {
    last = s2.Update(*b, w2.Execute(*b), absl::Now());
    b = s2.Schedule(absl::Now());
  }
  ASSERT_EQ(last.size(), 1u);
  EXPECT_EQ(last[0].reason, FinishReason::kStop);
  EXPECT_EQ(kv2.num_free_blocks(), 1000);
}

TEST(SchedulerTest, RandomizedStressKeepsThePoolConsistent) {
  std::mt19937 rng(11);
  for (int trial = 0; trial < 20; ++trial) {
    const int32_t blocks = 60 + rng() % 400;
    KvCacheManager kv(Config(blocks));
    SchedulerOptions o;
    o.max_batch_tokens = 8 + rng() % 64;
    o.max_seqs = 1 + rng() % 8;
    Scheduler s(o, &kv);
    FakeWorker w;
    const KvPolicyName policies[] = {KvPolicyName::kFull, KvPolicyName::kSnapKv,
                                     KvPolicyName::kPyramidKv, KvPolicyName::kAdaKv};
    RequestId next = 1;
    for (int step = 0; step < 400; ++step) {
      if (rng() % 3 == 0) {
        auto r = MakeRequest(next++, 1 + rng() % 60, 1 + rng() % 20,
                             Plan(policies[rng() % 4], 9 + rng() % 20), rng() % 3);
        (void)s.Add(std::move(r));
      }
      if (rng() % 10 == 0) s.Abort(1 + rng() % next, FinishReason::kAborted);
      auto batch = s.Schedule(absl::Now());
      if (batch.has_value()) s.Update(*batch, w.Execute(*batch), absl::Now());
      s.TakeAborted();
      ASSERT_LE(kv.num_free_blocks(), blocks);
    }
    RunAll(s, w);
    EXPECT_FALSE(s.HasUnfinished());
    EXPECT_EQ(kv.num_free_blocks(), blocks) << "trial " << trial;
  }
}

}  // namespace
}  // namespace hkv
