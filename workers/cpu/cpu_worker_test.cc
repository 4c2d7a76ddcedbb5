// CpuWorker on the real stories260K checkpoint: golden greedy ids, batching and chunking
// invariance, and the compressed-prefill path.

#include "workers/cpu/cpu_worker.h"

#include <algorithm>
#include <cmath>

#include "common/paths.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "model/llama2c_loader.h"
#include "workers/test_batch_builder.h"

namespace hkv {
namespace {

using testing::BatchBuilder;
using testing::kBlockSize;
using testing::kBlocksPerRow;
using testing::TestSeq;
const std::vector<TokenId> kGolden = {403, 407, 261, 378, 432, 383, 286, 261, 376, 298,
                                      315, 421, 395, 317, 426, 338, 401, 396, 267, 337,
                                      410, 408, 419, 292, 411, 322, 265, 282, 295, 433,
                                      426, 385, 328, 432, 358, 394, 261, 370, 432, 352};

std::shared_ptr<const Model> Stories() {
  static std::shared_ptr<const Model> model = [] {
    auto m = LoadLlama2cCheckpoint(DefaultModelPath());
    EXPECT_TRUE(m.ok()) << m.status();
    return std::make_shared<const Model>(std::move(*m));
  }();
  return model;
}

std::unique_ptr<CpuWorker> MakeWorker() {
  const ModelConfig& c = Stories()->config;
  auto w = std::make_unique<CpuWorker>(Stories(), 4 * c.num_layers * c.num_kv_heads * kBlocksPerRow,
                                       kBlockSize, 2);
  w->set_return_logits(true);
  return w;
}

// Greedy-decodes `steps` tokens after prefilling `prompt` (in chunks of `chunk`).
std::vector<TokenId> Greedy(CpuWorker& worker, int32_t slot, std::vector<TokenId> prompt,
                            int32_t steps, int32_t chunk = 1 << 20) {
  TestSeq seq{slot, {}, 0};
  std::vector<TokenId> out;
  for (size_t at = 0; at < prompt.size(); at += chunk) {
    const size_t end = std::min(prompt.size(), at + chunk);
    BatchBuilder b(worker.config());
    b.AddPlain(&seq, {prompt.begin() + at, prompt.begin() + end}, end == prompt.size(), 0);
    auto r = worker.Execute(b.Take());
    EXPECT_TRUE(r.ok()) << r.status();
    if (end == prompt.size()) out.push_back(r->seqs[0].token);
  }
  while (static_cast<int32_t>(out.size()) < steps) {
    BatchBuilder b(worker.config());
    b.AddPlain(&seq, {out.back()}, true, out.size());
    auto r = worker.Execute(b.Take());
    EXPECT_TRUE(r.ok()) << r.status();
    out.push_back(r->seqs[0].token);
  }
  return out;
}

// The engine builder's flow: report the capacity, then take a pool of the chosen size. A
// worker built without a pool runs nothing until it has one, then runs the golden ids.
TEST(CpuWorkerTest, ReportsCapacityThenRunsInThePoolItWasGiven) {
  const ModelConfig& c = Stories()->config;
  CpuWorker worker(Stories(), /*num_blocks=*/0, kBlockSize, 2);
  const auto capacity = worker.ReportKvCapacity();
  ASSERT_TRUE(capacity.ok()) << capacity.status();
  EXPECT_EQ(capacity->bytes_per_block, 2LL * kBlockSize * c.head_dim * 4);  // fp32 K and V
  EXPECT_EQ(capacity->max_blocks, INT32_MAX);
  TestSeq seq{0, {}, 0};
  BatchBuilder empty_pool(c);
  empty_pool.AddPlain(&seq, {1}, true, 0);
  EXPECT_EQ(worker.Execute(empty_pool.Take()).status().code(),
            absl::StatusCode::kInvalidArgument);  // its blocks are outside an empty pool
  EXPECT_EQ(worker.AllocateKvPool(-1).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(worker.AllocateKvPool(int64_t{INT32_MAX} + 1).code(),
            absl::StatusCode::kResourceExhausted);
  ASSERT_TRUE(worker.AllocateKvPool(c.num_layers * c.num_kv_heads * kBlocksPerRow).ok());
  EXPECT_EQ(worker.num_blocks(), c.num_layers * c.num_kv_heads * kBlocksPerRow);
  EXPECT_EQ(Greedy(worker, 0, {1}, 8), std::vector<TokenId>(kGolden.begin(), kGolden.begin() + 8));
}

TEST(CpuWorkerTest, GreedyFromBosGivesTheGoldenIds) {
  auto worker = MakeWorker();
  EXPECT_THAT(Greedy(*worker, 0, {1}, 40), ::testing::ElementsAreArray(kGolden));
}

TEST(CpuWorkerTest, LogitsAreFinite) {
  auto worker = MakeWorker();
  TestSeq seq{0, {}};
  BatchBuilder b(worker->config());
  b.AddPlain(&seq, {1, 403, 407, 261}, true, 0);
  auto r = worker->Execute(b.Take());
  ASSERT_TRUE(r.ok());
  ASSERT_EQ(r->seqs[0].logits.size(), 512u);
  for (float x : r->seqs[0].logits) ASSERT_TRUE(std::isfinite(x));
}

// Logprobs are log_softmax of the worker's own logits (written out here in double), for the
// sampled token and the top k; with penalties the token comes from the penalised logits.
TEST(CpuWorkerTest, LogprobsAreLogSoftmaxOfTheLogitsAndPenaltiesUseTheHistory) {
  auto worker = MakeWorker();
  TestSeq seq{0, {}, 0};
  std::vector<TokenId> generated;
  for (int step = 0; step < 6; ++step) {
    BatchBuilder b(worker->config());
    b.AddPlain(
        &seq,
        step == 0 ? std::vector<TokenId>{1, 403, 407} : std::vector<TokenId>{generated.back()},
        true, step);
    Batch batch = b.Take();
    batch.seqs[0].num_prompt_tokens = 3;
    batch.seqs[0].sampling.logprobs = 4;
    batch.seqs[0].sampling.frequency_penalty = 5.0f;
    auto r = worker->Execute(batch);
    ASSERT_TRUE(r.ok()) << r.status();
    const SequenceResult& res = r->seqs[0];
    const std::vector<float>& l = res.logits;
    double mx = -1e30, z = 0;
    for (float x : l) mx = std::max<double>(mx, x);
    for (float x : l) z += std::exp(x - mx);
    const double log_z = mx + std::log(z);
    ASSERT_EQ(res.logprobs.size(), 1u);
    EXPECT_EQ(res.logprobs[0].token, res.token);
    EXPECT_NEAR(res.logprobs[0].logprob, l[res.token] - log_z, 1e-5);
    ASSERT_EQ(res.logprobs[0].top_ids.size(), 4u);
    for (int k = 0; k < 4; ++k) {
      const TokenId t = res.logprobs[0].top_ids[k];
      EXPECT_NEAR(res.logprobs[0].top_logprobs[k], l[t] - log_z, 1e-5);
      if (k > 0) EXPECT_GE(l[res.logprobs[0].top_ids[k - 1]], l[t]);
    }
    // Greedy over the logits less 5 per earlier occurrence (the frequency penalty, by hand).
    std::vector<double> penalised(l.begin(), l.end());
    for (TokenId g : generated) penalised[g] -= 5.0;
    const TokenId want = static_cast<TokenId>(std::max_element(penalised.begin(), penalised.end()) -
                                              penalised.begin());
    EXPECT_EQ(res.token, want) << "step " << step;
    generated.push_back(res.token);
  }
  // The history is rebuilt from the steps' tokens: a step whose count disagrees is refused.
  BatchBuilder b(worker->config());
  b.AddPlain(&seq, {generated.back()}, true, 99);
  Batch wrong = b.Take();
  wrong.seqs[0].num_prompt_tokens = 3;
  wrong.seqs[0].sampling.frequency_penalty = 1.0f;
  EXPECT_EQ(worker->Execute(wrong).status().code(), absl::StatusCode::kInternal);
}

TEST(CpuWorkerTest, ChunkedPrefillEqualsOneShot) {
  auto worker = MakeWorker();
  std::vector<TokenId> prompt = {1};
  prompt.insert(prompt.end(), kGolden.begin(), kGolden.begin() + 30);
  EXPECT_EQ(Greedy(*worker, 0, prompt, 12), Greedy(*worker, 1, prompt, 12, /*chunk=*/7));
}

TEST(CpuWorkerTest, BatchingTwoSequencesChangesNothing) {
  auto worker = MakeWorker();
  std::vector<TokenId> a = {1, 403, 407}, b = {1, 403, 407, 261, 378, 432, 383, 286, 261};
  TestSeq sa{0, {}}, sb{1, {}};
  BatchBuilder builder(worker->config());
  builder.AddPlain(&sa, a, true, 0);
  builder.AddPlain(&sb, b, true, 0);
  auto together = worker->Execute(builder.Take());
  ASSERT_TRUE(together.ok());
  TestSeq ca{2, {}}, cb{3, {}};
  BatchBuilder alone_a(worker->config()), alone_b(worker->config());
  alone_a.AddPlain(&ca, a, true, 0);
  alone_b.AddPlain(&cb, b, true, 0);
  auto ra = worker->Execute(alone_a.Take());
  auto rb = worker->Execute(alone_b.Take());
  EXPECT_EQ(together->seqs[0].logits, ra->seqs[0].logits);
  EXPECT_EQ(together->seqs[1].logits, rb->seqs[0].logits);
}

TEST(CpuWorkerTest, CompressedPrefillKeepingEverythingIsBitIdentical) {
  auto worker = MakeWorker();
  const ModelConfig& c = worker->config();
  std::vector<TokenId> prompt = {1};
  prompt.insert(prompt.end(), kGolden.begin(), kGolden.begin() + 39);
  TestSeq plain{0, {}}, compressed{1, {}};
  BatchBuilder b1(c), b2(c);
  b1.AddPlain(&plain, prompt, true, 0);
  b2.AddSelect(&compressed, prompt,
               std::vector<int32_t>(c.num_layers * c.num_kv_heads, prompt.size()));
  auto r1 = worker->Execute(b1.Take());
  auto r2 = worker->Execute(b2.Take());
  ASSERT_TRUE(r1.ok() && r2.ok()) << r2.status();
  EXPECT_EQ(r1->seqs[0].logits, r2->seqs[0].logits);
  for (int32_t kept : r2->seqs[0].kept_per_head) EXPECT_EQ(kept, 40);
  // And the next decode step reads identical caches.
  BatchBuilder d1(c), d2(c);
  d1.AddPlain(&plain, {r1->seqs[0].token}, true, 1);
  d2.AddPlain(&compressed, {r2->seqs[0].token}, true, 1);
  auto n1 = worker->Execute(d1.Take());
  auto n2 = worker->Execute(d2.Take());
  EXPECT_EQ(n1->seqs[0].logits, n2->seqs[0].logits);
}

TEST(CpuWorkerTest, CompressedPrefillKeepsEachHeadsCapacityThenDecodes) {
  auto worker = MakeWorker();
  const ModelConfig& c = worker->config();
  std::vector<TokenId> prompt = {1};
  for (int i = 0; i < 3; ++i) prompt.insert(prompt.end(), kGolden.begin(), kGolden.end());
  std::vector<int32_t> capacity(c.num_layers * c.num_kv_heads);
  for (size_t i = 0; i < capacity.size(); ++i) capacity[i] = 2 + (i * 7) % 30;
  TestSeq seq{0, {}};
  BatchBuilder b(c);
  b.AddSelect(&seq, prompt, capacity);
  auto r = worker->Execute(b.Take());
  ASSERT_TRUE(r.ok()) << r.status();
  for (size_t i = 0; i < capacity.size(); ++i) {
    EXPECT_EQ(r->seqs[0].kept_per_head[i], capacity[i] + 8);
  }
  TokenId next = r->seqs[0].token;
  for (int step = 1; step < 10; ++step) {
    BatchBuilder d(c);
    d.AddPlain(&seq, {next}, true, step);
    auto s = worker->Execute(d.Take());
    ASSERT_TRUE(s.ok()) << s.status();
    for (float x : s->seqs[0].logits) ASSERT_TRUE(std::isfinite(x));
    next = s->seqs[0].token;
  }
}

TEST(CpuWorkerTest, AdaptiveSelectionFillsTheLayerReservation) {
  auto worker = MakeWorker();
  const ModelConfig& c = worker->config();
  std::vector<TokenId> prompt = {1};
  prompt.insert(prompt.end(), kGolden.begin(), kGolden.end());
  const int32_t n = prompt.size();
  Batch batch;
  batch.num_layers = c.num_layers;
  batch.num_kv_heads = c.num_kv_heads;
  batch.block_size = kBlockSize;
  batch.kv_indptr.assign(c.num_layers * c.num_kv_heads + 1, 0);
  batch.kv_len_before.assign(c.num_layers * c.num_kv_heads, 0);
  batch.kv_len_after.assign(c.num_layers * c.num_kv_heads, 0);
  SequenceStep s;
  s.tokens = prompt;
  s.sample = true;
  s.select = true;
  s.selection.layer_budget.assign(c.num_layers, c.num_kv_heads * 8);
  s.layer_block_indptr = {0};
  for (int32_t l = 0; l < c.num_layers; ++l) {
    for (int32_t i = 0; i < c.num_kv_heads * 2; ++i) s.layer_blocks.push_back(l * 100 + i);
    s.layer_block_indptr.push_back(s.layer_blocks.size());
  }
  batch.seqs.push_back(s);
  auto r = worker->Execute(batch);
  ASSERT_TRUE(r.ok()) << r.status();
  for (int32_t l = 0; l < c.num_layers; ++l) {
    int32_t total = 0;
    for (int32_t h = 0; h < c.num_kv_heads; ++h) {
      const int32_t kept = r->seqs[0].kept_per_head[l * c.num_kv_heads + h];
      EXPECT_GE(kept, 8);
      EXPECT_LE(kept, n);
      total += kept - 8;
    }
    EXPECT_EQ(total, c.num_kv_heads * 8) << "layer " << l;
  }
}

TEST(CpuWorkerTest, MalformedBatchIsAnErrorNotACrash) {
  auto worker = MakeWorker();
  TestSeq seq{0, {}};
  BatchBuilder b(worker->config());
  b.AddPlain(&seq, {1, 2, 3}, true, 0);
  Batch good = b.Take();
  Batch bad = good;
  bad.kv_indices[0] = 1 << 30;
  EXPECT_EQ(worker->Execute(bad).status().code(), absl::StatusCode::kInvalidArgument);
  bad = good;
  bad.kv_len_after[0] = 1000;
  EXPECT_EQ(worker->Execute(bad).status().code(), absl::StatusCode::kInvalidArgument);
  bad = good;
  bad.seqs[0].tokens[1] = 9999;
  EXPECT_EQ(worker->Execute(bad).status().code(), absl::StatusCode::kInvalidArgument);
  bad = good;
  bad.num_layers = 2;
  EXPECT_EQ(worker->Execute(bad).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(worker->Execute(good).ok());
}

}  // namespace
}  // namespace hkv
