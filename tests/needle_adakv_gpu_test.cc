// AdaKV on the CUDA worker against the fp32 CPU worker on the trained needle fixture
// (tests/data/needle: 6 layers, 2 KV heads, head_dim 64): an adaptive compressed prefill of a
// held-out 1k-token prompt, then greedy decoding along the CPU's path. Each layer's kept tokens
// sum to the same total on both (the split always spends the layer budget); per head the
// counts and kept positions agree up to bf16 near-ties of the window scores (a max-pool
// plateau or two). Decoding then compares the GPU with the CPU reading the GPU's kept set
// (the CPU's cache rebuilt from a dense prefill with the GPU's positions): logits agree to
// bf16 error, and the greedy token is the CPU's wherever the CPU's top-2 margin clears it.
// Skips without a GPU.

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <map>
#include <numeric>
#include <string>
#include <vector>

#include "common/paths.h"
#include "gtest/gtest.h"
#include "headkv/head_budget_planner.h"
#include "model/hf_loader.h"
#include "nlohmann/json.hpp"
#include "workers/cpu/cpu_worker.h"
#include "workers/cuda/cuda_worker.h"
#include "workers/test_batch_builder.h"

namespace hkv {
namespace {

using testing::ClearGreedyMargin;
using testing::RelativeError;

constexpr int32_t kBlock = 16;
constexpr int32_t kPoolBlocks = 2048;
constexpr double kTolerance = 5e-2;  // bf16 logits after a selection that may differ at ties.
// Max-pooling (kernel 7) makes plateaus of equal pooled scores: a near-tie at the budget's
// boundary can move one or two whole plateaus from one head to another.
constexpr int32_t kTieSlack = 14;

// One sequence on one worker: its rows' blocks and lengths once the adaptive prefill is
// committed (as the block manager's CommitAdaptive does), and a bump allocator of blocks.
struct AdaSeq {
  RequestId id = 0;
  int32_t next_block = 0;
  std::vector<int32_t> layer_indptr;  // the prefill's reservation
  std::vector<BlockId> layer_blocks;
  std::vector<std::vector<BlockId>> rows;
  std::vector<int32_t> len;
  int32_t position = 0;
};

Batch NewBatch(const ModelConfig& c) {
  Batch b;
  b.num_layers = c.num_layers;
  b.num_kv_heads = c.num_kv_heads;
  b.block_size = kBlock;
  b.kv_indptr = {0};
  return b;
}

// The adaptive prefill of `prompt`: empty rows, each layer's bound of blocks reserved.
Batch AdaptivePrefill(const ModelConfig& c, const HeadBudgetPlan& plan,
                      const std::vector<TokenId>& prompt, AdaSeq& s) {
  Batch b = NewBatch(c);
  const int32_t rows = c.num_layers * c.num_kv_heads;
  for (int32_t r = 0; r < rows; ++r) {
    b.kv_indptr.push_back(0);
    b.kv_len_before.push_back(0);
    b.kv_len_after.push_back(0);
  }
  SequenceStep st;
  st.id = s.id;
  st.tokens = prompt;
  st.sample = true;
  st.select = true;
  st.selection.window = plan.window;
  st.selection.layer_budget = plan.layer_budget;
  s.layer_indptr = {0};
  for (int32_t l = 0; l < c.num_layers; ++l) {
    const int64_t need = plan.MaxBlocksPerLayer(l, static_cast<int32_t>(prompt.size()), kBlock);
    for (int64_t i = 0; i < need; ++i) s.layer_blocks.push_back(s.next_block++);
    s.layer_indptr.push_back(static_cast<int32_t>(s.layer_blocks.size()));
  }
  st.layer_block_indptr = s.layer_indptr;
  st.layer_blocks = s.layer_blocks;
  b.seqs.push_back(std::move(st));
  s.position = static_cast<int32_t>(prompt.size());
  return b;
}

// Splits the reservation as the block manager does: head h of layer l takes the next
// ceil(kept / block_size) blocks of the layer's list.
void Commit(const ModelConfig& c, const std::vector<int32_t>& kept, AdaSeq& s) {
  const int32_t H = c.num_kv_heads;
  s.rows.assign(kept.size(), {});
  s.len = kept;
  for (int32_t l = 0; l < c.num_layers; ++l) {
    int32_t next = s.layer_indptr[l];
    for (int32_t h = 0; h < H; ++h) {
      const int32_t nb = (kept[l * H + h] + kBlock - 1) / kBlock;
      ASSERT_LE(next + nb, s.layer_indptr[l + 1]) << "layer " << l << " overflows its reservation";
      s.rows[l * H + h].assign(s.layer_blocks.begin() + next, s.layer_blocks.begin() + next + nb);
      next += nb;
    }
  }
}

// The CPU's cache of `prompt` with the positions the GPU kept: a plain prefill of the whole
// prompt into scratch rows (blocks from `scratch_block`), then, row by row, the GPU's kept
// positions copied into the rows Commit laid out for `kept` (x's blocks from x.next_block).
// Decoding x on the CPU then reads the cache the GPU decodes from, up to bf16.
void RebuildWithKeptPositions(CpuWorker& cpu, const ModelConfig& c,
                              const std::vector<TokenId>& prompt, const std::vector<int32_t>& kept,
                              const std::vector<int32_t>& positions, int32_t scratch_block,
                              AdaSeq& x) {
  const int32_t n = static_cast<int32_t>(prompt.size()), rows = c.num_layers * c.num_kv_heads;
  const int32_t per_row = (n + kBlock - 1) / kBlock;
  Batch dense = NewBatch(c);
  for (int32_t r = 0; r < rows; ++r) {
    for (int32_t i = 0; i < per_row; ++i)
      dense.kv_indices.push_back(scratch_block + r * per_row + i);
    dense.kv_indptr.push_back(static_cast<int32_t>(dense.kv_indices.size()));
    dense.kv_len_before.push_back(0);
    dense.kv_len_after.push_back(n);
  }
  SequenceStep st;
  st.id = x.id;
  st.tokens = prompt;
  dense.seqs.push_back(std::move(st));
  auto r = cpu.Execute(dense);
  ASSERT_TRUE(r.ok()) << r.status();
  x.rows.assign(rows, {});
  x.len = kept;
  x.position = n;
  for (int32_t row = 0, at = 0; row < rows; at += kept[row], ++row) {
    for (int32_t i = 0; i < (kept[row] + kBlock - 1) / kBlock; ++i) {
      x.rows[row].push_back(x.next_block++);
    }
    for (int32_t s = 0; s < kept[row]; ++s) {
      const int32_t from = scratch_block + row * per_row + positions[at + s] / kBlock;
      cpu.CopySlot(from, positions[at + s] % kBlock, x.rows[row][s / kBlock], s % kBlock);
    }
  }
}

// One decode step of `token`, every row growing by one (a fresh block when the last is full).
Batch Decode(const ModelConfig& c, TokenId token, int32_t step, AdaSeq& s) {
  Batch b = NewBatch(c);
  for (size_t r = 0; r < s.rows.size(); ++r) {
    if (s.len[r] + 1 > static_cast<int32_t>(s.rows[r].size()) * kBlock) {
      s.rows[r].push_back(s.next_block++);
    }
    b.kv_indices.insert(b.kv_indices.end(), s.rows[r].begin(), s.rows[r].end());
    b.kv_indptr.push_back(static_cast<int32_t>(b.kv_indices.size()));
    b.kv_len_before.push_back(s.len[r]);
    b.kv_len_after.push_back(++s.len[r]);
  }
  SequenceStep st;
  st.id = s.id;
  st.tokens = {token};
  st.start_pos = s.position++;
  st.sample = true;
  st.sample_step = step;
  b.seqs.push_back(std::move(st));
  return b;
}

std::map<std::string, nlohmann::json> EvalRecords(const std::string& dir) {
  std::ifstream in(dir + "/eval.jsonl");
  std::map<std::string, nlohmann::json> out;
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    nlohmann::json j = nlohmann::json::parse(line);
    const std::string id = j["id"].get<std::string>();
    out[id] = std::move(j);
  }
  return out;
}

// The CPU's and the GPU's two best tokens and their logits: tells a bf16 near-tie from a
// different kept set (which moves the whole distribution) when a step disagrees.
std::string TopTwo(const std::vector<float>& logits) {
  if (logits.size() < 2) return "-";
  std::vector<int> idx(logits.size());
  for (size_t i = 0; i < idx.size(); ++i) idx[i] = static_cast<int>(i);
  std::partial_sort(idx.begin(), idx.begin() + 2, idx.end(),
                    [&](int a, int b) { return logits[a] > logits[b]; });
  char buf[96];
  std::snprintf(buf, sizeof(buf), "%d (%.3f), %d (%.3f)", idx[0], logits[idx[0]], idx[1],
                logits[idx[1]]);
  return buf;
}

// Each prefill attention kernel the worker can run (kAuto: the wgmma kernel on an H100/H200),
// so that a disagreement names the kernel it comes with.
class NeedleAdaKvGpuTest : public ::testing::TestWithParam<CudaPrefillKernel> {};

TEST_P(NeedleAdaKvGpuTest, CudaAdaKvMatchesTheCpuWorker) {
  if (!CudaDeviceAvailable()) GTEST_SKIP() << "no CUDA device";
  const std::string dir = SourceDir() + "/tests/data/needle";
  auto model = LoadHfModel(dir);
  ASSERT_TRUE(model.ok()) << model.status();
  auto shared = std::make_shared<const Model>(std::move(*model));
  const ModelConfig& c = shared->config;
  // CPU pool: the compressed prefills' blocks, the rebuilt caches' (from kPoolBlocks), the
  // dense scratch rows (from 2 * kPoolBlocks).
  CpuWorker cpu(shared, 3 * kPoolBlocks, kBlock, 8);
  cpu.set_return_logits(true);
  cpu.set_return_kept_positions(true);
  CudaWorkerOptions o;
  o.block_size = kBlock;
  o.num_blocks = kPoolBlocks;
  o.activation_reserve_bytes = 256 << 20;
  o.max_step_tokens = 4096;
  o.max_seqs = 4;
  o.prefill_kernel = GetParam();
  auto gpu = CudaWorker::Create(shared, o);
  ASSERT_TRUE(gpu.ok()) << gpu.status();
  (*gpu)->set_return_logits(true);
  (*gpu)->set_return_kept_positions(true);
  ASSERT_TRUE((*gpu)->SupportsAdaptiveSelection());
  const auto records = EvalRecords(dir);
  int64_t heads = 0, heads_equal = 0, sets_equal = 0, compared = 0, steps = 0;
  int64_t cases = 0, same_sets_cases = 0;
  for (const char* id : {"single-1024-00", "multi-1024-00", "fav-1024-00"}) {
    ASSERT_TRUE(records.count(id)) << id;
    const std::vector<TokenId> prompt = records.at(id)["prompt_ids"].get<std::vector<TokenId>>();
    for (int32_t budget : {16, 64, 128}) {
      SCOPED_TRACE(std::string(id) + " adakv B=" + std::to_string(budget));
      KvPolicy policy;
      policy.name = KvPolicyName::kAdaKv;
      policy.budget = budget;
      auto plan = HeadBudgetPlanner::Plan(policy, c.num_layers, c.num_kv_heads);
      ASSERT_TRUE(plan.ok()) << plan.status();
      AdaSeq sc, sg;
      sc.id = sg.id = 1;
      auto rc = cpu.Execute(AdaptivePrefill(c, *plan, prompt, sc));
      auto rg = (*gpu)->Execute(AdaptivePrefill(c, *plan, prompt, sg));
      ASSERT_TRUE(rc.ok()) << rc.status();
      ASSERT_TRUE(rg.ok()) << rg.status();
      const std::vector<int32_t>& kc = rc->seqs[0].kept_per_head;
      const std::vector<int32_t>& kg = rg->seqs[0].kept_per_head;
      ASSERT_EQ(kc.size(), kg.size());
      const int32_t H = c.num_kv_heads;
      const std::vector<int32_t>& pc = rc->seqs[0].kept_positions;
      const std::vector<int32_t>& pg = rg->seqs[0].kept_positions;
      ASSERT_EQ(pc.size(), static_cast<size_t>(std::accumulate(kc.begin(), kc.end(), 0)));
      ASSERT_EQ(pg.size(), static_cast<size_t>(std::accumulate(kg.begin(), kg.end(), 0)));
      bool same_sets = true;
      for (size_t r = 0, at_c = 0, at_g = 0; r < kc.size(); at_c += kc[r], at_g += kg[r], ++r) {
        const std::vector<int32_t> a(pc.begin() + at_c, pc.begin() + at_c + kc[r]);
        const std::vector<int32_t> g(pg.begin() + at_g, pg.begin() + at_g + kg[r]);
        ASSERT_TRUE(std::is_sorted(g.begin(), g.end())) << "row " << r;
        std::vector<int32_t> only_cpu;
        std::set_difference(a.begin(), a.end(), g.begin(), g.end(), std::back_inserter(only_cpu));
        // The same near-tie bound as the counts: a plateau or two changes sides.
        EXPECT_LE(static_cast<int32_t>(only_cpu.size()), kTieSlack) << "row " << r;
        const bool equal = a == g;
        sets_equal += equal ? 1 : 0;
        same_sets = same_sets && equal;
      }
      for (int32_t l = 0; l < c.num_layers; ++l) {
        int64_t sum_c = 0, sum_g = 0;
        for (int32_t h = 0; h < H; ++h) {
          const int32_t a = kc[l * H + h], g = kg[l * H + h];
          sum_c += a;
          sum_g += g;
          ++heads;
          heads_equal += a == g ? 1 : 0;
          // A near-tie moves a plateau or two between heads, never more.
          EXPECT_LE(std::abs(a - g), kTieSlack) << "layer " << l << " head " << h;
        }
        EXPECT_EQ(sum_c, sum_g) << "layer " << l;
        EXPECT_EQ(sum_c, plan->LayerKeptBound(l, static_cast<int32_t>(prompt.size())));
      }
      Commit(c, kg, sg);
      // Decode compares the GPU with the CPU reading the same kept set: where a near-tie
      // made the sets differ, the CPU's cache is rebuilt with the GPU's positions (a kept
      // needle token or not changes the answer, whichever worker is right at a tie).
      AdaSeq sx;
      sx.id = 2;
      sx.next_block = kPoolBlocks;
      RebuildWithKeptPositions(cpu, c, prompt, kg, pg, 2 * kPoolBlocks, sx);
      same_sets_cases += same_sets ? 1 : 0;
      ++cases;
      // Greedy along the CPU's path (step 0: the prefill's own logits, before any selection).
      for (int32_t step = 0; step < 8; ++step) {
        const std::vector<float>& want = rc->seqs[0].logits;
        const std::string tops =
            "cpu top-2 " + TopTwo(want) + "; gpu top-2 " + TopTwo(rg->seqs[0].logits);
        EXPECT_LT(RelativeError(rg->seqs[0].logits, want), 2 * kTolerance)
            << "step " << step << ": " << tops;
        if (ClearGreedyMargin(want, kTolerance)) {
          EXPECT_EQ(rg->seqs[0].token, rc->seqs[0].token) << "step " << step << ": " << tops;
          ++compared;
        }
        ++steps;
        const TokenId next = rc->seqs[0].token;
        rc = cpu.Execute(Decode(c, next, step + 1, sx));
        rg = (*gpu)->Execute(Decode(c, next, step + 1, sg));
        ASSERT_TRUE(rc.ok()) << rc.status();
        ASSERT_TRUE(rg.ok()) << rg.status();
      }
    }
  }
  std::printf(
      "adakv heads with equal kept counts: %lld of %lld, equal kept positions: %lld; cases "
      "whose every head kept the CPU's positions: %lld of %lld; greedy tokens compared: %lld "
      "of %lld\n",
      static_cast<long long>(heads_equal), static_cast<long long>(heads),
      static_cast<long long>(sets_equal), static_cast<long long>(same_sets_cases),
      static_cast<long long>(cases), static_cast<long long>(compared),
      static_cast<long long>(steps));
  EXPECT_GT(compared, 0);
}

INSTANTIATE_TEST_SUITE_P(PrefillKernels, NeedleAdaKvGpuTest,
                         ::testing::Values(CudaPrefillKernel::kMmaSync, CudaPrefillKernel::kAuto),
                         [](const ::testing::TestParamInfo<CudaPrefillKernel>& i) {
                           return i.param == CudaPrefillKernel::kMmaSync ? std::string("mma")
                                                                         : std::string("auto");
                         });

}  // namespace
}  // namespace hkv
