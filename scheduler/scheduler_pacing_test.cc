// The Scheduler with prefill pacing on, against a simulated GPU whose step time grows with the
// tokens and the causal attention work of the step: 8 streams decode while a long prompt
// arrives (the scenario of bench/gpu_long_prompt_bench.sh). Pacing bounds the streams' worst gap
// (max_step) and keeps their throughput (max_prefill_share), and the long prompt still finishes.

#include <algorithm>
#include <iostream>
#include <map>
#include <memory>

#include "gtest/gtest.h"
#include "headkv/head_budget_planner.h"
#include "scheduler/scheduler.h"

namespace hkv {
namespace {

constexpr int32_t kLayers = 2, kHeads = 2, kBlockSize = 16;
constexpr double kDecode = 0.006, kPerToken = 20e-6, kPerPair = 1.7e-9;
constexpr RequestId kLong = 100;

HeadBudgetPlan Plan(KvPolicyName name, int32_t budget) {
  KvPolicy p;
  p.name = name;
  p.budget = budget;
  auto plan = HeadBudgetPlanner::Plan(p, kLayers, kHeads);
  EXPECT_TRUE(plan.ok()) << plan.status();
  return *plan;
}

std::unique_ptr<Request> MakeRequest(RequestId id, int32_t prompt_len, int32_t max_tokens,
                                     HeadBudgetPlan plan) {
  auto r = std::make_unique<Request>();
  r->id = id;
  for (int32_t i = 0; i < prompt_len; ++i) r->prompt.push_back(3 + (id * 31 + i * 7) % 300);
  r->sampling.max_tokens = max_tokens;
  r->eos_ids = {2};
  r->plan = std::move(plan);
  r->arrival_time = absl::UnixEpoch();
  return r;
}

struct Outcome {
  double worst_gap = 0;       // streams' longest wait between tokens in the window, seconds
  double worst_late_gap = 0;  // the same, once the pacer has seen two prefill steps
  double window_share = 0;    // streams' tokens in the window / what they make alone
  double long_ttft = 0;       // the long prompt's first token, seconds after it arrived
  int32_t long_tokens = 0;    // tokens the long prompt generated
};

// Runs 8 decoding streams alone for 40 steps, then adds a 32k prompt and runs until it has
// generated 2 tokens.
Outcome Simulate(const PrefillPacingOptions& pacing, KvPolicyName long_policy) {
  KvCacheManager kv({200000, kBlockSize, kLayers, kHeads});
  SchedulerOptions o;
  o.pacing = pacing;
  Scheduler s(o, &kv);
  for (RequestId id = 1; id <= 8; ++id) {
    EXPECT_TRUE(s.Add(MakeRequest(id, 16, 20000, Plan(KvPolicyName::kFull, 0))).ok());
  }
  absl::Time now = absl::UnixEpoch();
  std::map<RequestId, absl::Time> last_token;
  Outcome out;
  absl::Time arrived = absl::InfiniteFuture(), first = absl::InfiniteFuture();
  int64_t window_tokens = 0, prefill_steps = 0;
  for (int step = 0; step < 100000 && out.long_tokens < 2; ++step) {
    if (step == 40) {
      EXPECT_TRUE(s.Add(MakeRequest(kLong, 32768, 2, Plan(long_policy, 256))).ok());
      arrived = now;
    }
    std::optional<Batch> b = s.Schedule(now);
    if (!b.has_value()) break;
    double cost = 0;
    bool decodes = false, long_prefill = false;
    for (const SequenceStep& q : b->seqs) {
      const double n = static_cast<double>(q.tokens.size());
      if (n == 1) {
        decodes = true;
      } else {
        cost += kPerToken * n + kPerPair * n * (q.start_pos + n / 2);
        long_prefill |= q.id == kLong;
      }
    }
    now += absl::Seconds(cost + (decodes ? kDecode : 0.0));
    prefill_steps += long_prefill;
    BatchResult result;
    for (const SequenceStep& q : b->seqs) {
      SequenceResult r;
      r.id = q.id;
      if (q.sample) r.token = 7;
      if (q.select) {
        const int32_t n = static_cast<int32_t>(q.tokens.size()) + q.start_pos;
        for (int32_t cap : q.selection.capacity) {
          r.kept_per_head.push_back(std::min(cap, n - q.selection.window) + q.selection.window);
        }
      }
      result.seqs.push_back(std::move(r));
      if (!q.sample) continue;
      if (q.id == kLong) {
        if (++out.long_tokens == 1) first = now;
        continue;
      }
      if (arrived != absl::InfiniteFuture() && first == absl::InfiniteFuture()) {
        const double gap = absl::ToDoubleSeconds(now - last_token[q.id]);
        out.worst_gap = std::max(out.worst_gap, gap);
        if (prefill_steps > 2) out.worst_late_gap = std::max(out.worst_late_gap, gap);
        ++window_tokens;
      }
      last_token[q.id] = now;
    }
    s.Update(*b, result, now);
  }
  EXPECT_EQ(out.long_tokens, 2) << "the long prompt finishes";
  out.long_ttft = absl::ToDoubleSeconds(first - arrived);
  out.window_share = window_tokens / (8.0 * out.long_ttft / kDecode);
  std::cout << "max_step " << absl::FormatDuration(pacing.max_step) << ", share "
            << pacing.max_prefill_share << ": worst gap " << out.worst_gap * 1e3 << " ms (after "
            << "the fit " << out.worst_late_gap * 1e3 << " ms), streams " << out.window_share
            << " of alone, long prompt's first token after " << out.long_ttft << " s\n";
  return out;
}

TEST(SchedulerPacingTest, WithoutPacingAChunkDeepInTheLongPromptStallsTheStreams) {
  const Outcome off = Simulate(PrefillPacingOptions{}, KvPolicyName::kFull);
  EXPECT_GT(off.worst_gap, 0.4);
  EXPECT_LT(off.window_share, 0.1);
}

TEST(SchedulerPacingTest, MaxStepBoundsTheWorstGap) {
  PrefillPacingOptions p;
  p.max_step = absl::Milliseconds(100);
  for (KvPolicyName policy : {KvPolicyName::kFull, KvPolicyName::kSnapKv}) {
    const Outcome o = Simulate(p, policy);
    EXPECT_LE(o.worst_late_gap, 0.100 * 1.05) << "once the costs are fitted";
    EXPECT_LE(o.worst_gap, 0.35) << "the first chunks run before any prefill was measured";
  }
}

TEST(SchedulerPacingTest, PrefillShareKeepsTheStreamsThroughput) {
  const Outcome fast =
      Simulate(PrefillPacingOptions{.max_step = absl::Milliseconds(100)}, KvPolicyName::kSnapKv);
  PrefillPacingOptions p;
  p.max_step = absl::Milliseconds(100);
  p.max_prefill_share = 0.4;
  const Outcome o = Simulate(p, KvPolicyName::kSnapKv);
  EXPECT_GE(o.window_share, 0.55);
  EXPECT_LE(o.worst_late_gap, 0.100 * 1.05);
  // The price: the long prompt takes longer to its first token.
  EXPECT_GT(o.long_ttft, fast.long_ttft * 1.5);
}

}  // namespace
}  // namespace hkv
