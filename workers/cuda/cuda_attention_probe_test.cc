// CudaWorker's attention probes against the fp32 CpuWorker on the trained needle fixture
// (8 query heads over 2 KV heads, head_dim 64, bf16 weights): the same top positions and
// weights within bf16 tolerance, probe steps eager while plain decodes keep their graphs, and a
// 10k-token row. Skips without a GPU.

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>

#include "common/paths.h"
#include "gtest/gtest.h"
#include "model/hf_loader.h"
#include "workers/cpu/cpu_worker.h"
#include "workers/cuda/cuda_worker.h"

namespace hkv {
namespace {

constexpr int32_t kBlock = 16;

std::shared_ptr<const Model> Needle(int32_t max_seq_len = 0) {
  auto m = LoadHfModel(SourceDir() + "/tests/data/needle");
  EXPECT_TRUE(m.ok()) << m.status();
  if (max_seq_len > 0) m->config.max_seq_len = max_seq_len;  // RoPE extends; values untrained.
  return std::make_shared<const Model>(std::move(*m));
}

// Plain steps; sequence i owns blocks [i * rows * per_row, ...).
struct Steps {
  Steps(const ModelConfig& c, int32_t per_row) : c(c), per_row(per_row) {
    b.num_layers = c.num_layers;
    b.num_kv_heads = c.num_kv_heads;
    b.block_size = kBlock;
    b.kv_indptr = {0};
  }
  void Add(int32_t slot, std::vector<TokenId> tokens, int32_t start, int32_t top_n,
           int32_t prompt_len) {
    const int32_t rows = c.num_layers * c.num_kv_heads;
    const int32_t after = start + static_cast<int32_t>(tokens.size());
    for (int32_t r = 0; r < rows; ++r) {
      for (int32_t k = 0; k < (after + kBlock - 1) / kBlock; ++k) {
        b.kv_indices.push_back((slot * rows + r) * per_row + k);
      }
      b.kv_indptr.push_back(static_cast<int32_t>(b.kv_indices.size()));
      b.kv_len_before.push_back(start);
      b.kv_len_after.push_back(after);
    }
    SequenceStep s;
    s.id = slot;
    s.tokens = std::move(tokens);
    s.start_pos = start;
    s.sample = true;
    s.sample_step = start;
    s.probe_top_n = top_n;
    s.probe_prompt_len = prompt_len;
    b.seqs.push_back(std::move(s));
  }
  const ModelConfig& c;
  int32_t per_row;
  Batch b;
};

std::vector<TokenId> RandomTokens(int32_t n, int32_t vocab, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<TokenId> t(n);
  for (TokenId& id : t) id = static_cast<TokenId>(rng() % vocab);
  return t;
}

std::unique_ptr<CudaWorker> Gpu(std::shared_ptr<const Model> model, int64_t blocks,
                                int32_t max_step_tokens = 8192) {
  CudaWorkerOptions o;
  o.block_size = kBlock;
  o.num_blocks = blocks;
  o.max_step_tokens = max_step_tokens;
  o.activation_reserve_bytes = 256 << 20;
  auto gpu = CudaWorker::Create(std::move(model), o);
  EXPECT_TRUE(gpu.ok()) << gpu.status();
  return gpu.ok() ? std::move(*gpu) : nullptr;
}

TEST(CudaAttentionProbeTest, MatchesTheCpuWorkerWithinBf16Tolerance) {
  if (!CudaDeviceAvailable()) GTEST_SKIP() << "no CUDA device";
  const std::shared_ptr<const Model> model = Needle();
  const ModelConfig& c = model->config;
  const int32_t n = 700, per_row = (n + kBlock) / kBlock;
  const int64_t blocks = 2LL * c.num_layers * c.num_kv_heads * per_row;
  CpuWorker cpu(model, static_cast<int32_t>(blocks), kBlock, 4);
  std::unique_ptr<CudaWorker> gpu = Gpu(model, blocks);
  ASSERT_NE(gpu, nullptr);
  const std::vector<TokenId> a = RandomTokens(n, c.vocab_size, 3),
                             b = RandomTokens(n, c.vocab_size, 4);
  Steps prefill(c, per_row);
  prefill.Add(0, {a.begin(), a.end() - 1}, 0, 0, 0);
  prefill.Add(1, {b.begin(), b.end() - 1}, 0, 0, 0);
  ASSERT_TRUE(cpu.Execute(prefill.b).ok());
  ASSERT_TRUE(gpu->Execute(prefill.b).ok());
  Steps decode(c, per_row);
  decode.Add(0, {a.back()}, n - 1, 16, n - 50);  // The last 50 positions not ranked.
  decode.Add(1, {b.back()}, n - 1, 3, n);
  const int64_t eager_before = gpu->eager_steps();
  auto want = cpu.Execute(decode.b);
  auto got = gpu->Execute(decode.b);
  ASSERT_TRUE(want.ok()) << want.status();
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(gpu->eager_steps(), eager_before + 1);  // Probe steps never replay a graph.
  for (int s = 0; s < 2; ++s) {
    const SequenceResult& w = want->seqs[s];
    const SequenceResult& g = got->seqs[s];
    ASSERT_EQ(g.probe_positions.size(), w.probe_positions.size());
    ASSERT_EQ(g.probe_weights.size(), w.probe_weights.size());
    const int32_t k = s == 0 ? 16 : 3;
    int same = 0, loose = 0;
    for (size_t i = 0; i < w.probe_weights.size(); ++i) {
      // bf16 activations through 6 layers: a softmax weight moves by exp(logit error), which on
      // this fixture's sharp heads reaches ~15% (measured on an H200: 21 of 768 and 24 of 144
      // weights past 5%; the worst, 0.039 vs 0.030). Every weight of a position both name within
      // 5e-3 + 35%; three in four within 2e-3 + 5%.
      EXPECT_LT(g.probe_positions[i], s == 0 ? n - 50 : n);
      if (g.probe_positions[i] != w.probe_positions[i]) continue;  // a near-tie swapped ranks
      ++same;
      EXPECT_NEAR(g.probe_weights[i], w.probe_weights[i], 5e-3 + 0.35 * w.probe_weights[i])
          << "seq " << s << " entry " << i;
      loose += std::abs(g.probe_weights[i] - w.probe_weights[i]) > 2e-3 + 0.05 * w.probe_weights[i];
    }
    std::printf("seq %d: %d of %zu weights past 2e-3 + 5%%, %d positions equal\n", s, loose,
                w.probe_weights.size(), same);
    EXPECT_LE(loose, static_cast<int>(0.25 * w.probe_weights.size())) << "seq " << s;
    // Near-ties may swap; most ranks name the same position.
    EXPECT_GE(same, static_cast<int>(0.5 * w.probe_positions.size())) << "seq " << s;
    EXPECT_EQ(w.probe_positions.size(), static_cast<size_t>(c.num_layers) * c.num_heads * k);
  }
  // The same step without probes replays a graph.
  Steps plain(c, per_row);
  plain.Add(0, {a.back()}, n - 1, 0, 0);
  plain.Add(1, {b.back()}, n - 1, 0, 0);
  const int64_t graphs_before = gpu->graph_steps();
  auto again = gpu->Execute(plain.b);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(gpu->graph_steps(), graphs_before + 1);
  EXPECT_TRUE(again->seqs[0].probe_positions.empty());
  EXPECT_EQ(again->seqs[0].token, got->seqs[0].token);
}

// The paper's grid reaches 10k tokens: one layer's rows at a time, top-N well formed.
TEST(CudaAttentionProbeTest, TenThousandTokenPrompt) {
  if (!CudaDeviceAvailable()) GTEST_SKIP() << "no CUDA device";
  const std::shared_ptr<const Model> model = Needle(12288);
  const ModelConfig& c = model->config;
  const int32_t n = 10240, per_row = (n + kBlock) / kBlock;
  std::unique_ptr<CudaWorker> gpu = Gpu(model, 1LL * c.num_layers * c.num_kv_heads * per_row, n);
  ASSERT_NE(gpu, nullptr);
  const std::vector<TokenId> t = RandomTokens(n, c.vocab_size, 5);
  Steps prefill(c, per_row);
  prefill.Add(0, {t.begin(), t.end() - 1}, 0, 0, 0);
  ASSERT_TRUE(gpu->Execute(prefill.b).ok());
  Steps decode(c, per_row);
  decode.Add(0, {t.back()}, n - 1, 256, n);
  auto r = gpu->Execute(decode.b);
  ASSERT_TRUE(r.ok()) << r.status();
  const SequenceResult& s = r->seqs[0];
  ASSERT_EQ(s.probe_positions.size(), static_cast<size_t>(c.num_layers) * c.num_heads * 256);
  for (size_t row = 0; row < s.probe_positions.size() / 256; ++row) {
    double sum = 0;
    std::vector<int32_t> seen;
    for (int i = 0; i < 256; ++i) {
      const size_t at = row * 256 + i;
      ASSERT_GE(s.probe_positions[at], 0);
      ASSERT_LT(s.probe_positions[at], n);
      if (i > 0) EXPECT_LE(s.probe_weights[at], s.probe_weights[at - 1]);
      sum += s.probe_weights[at];
      seen.push_back(s.probe_positions[at]);
    }
    std::sort(seen.begin(), seen.end());
    EXPECT_EQ(std::adjacent_find(seen.begin(), seen.end()), seen.end());  // Distinct.
    EXPECT_LE(sum, 1.0 + 1e-3);
    EXPECT_GT(sum, 0.0);
  }
}

}  // namespace
}  // namespace hkv
