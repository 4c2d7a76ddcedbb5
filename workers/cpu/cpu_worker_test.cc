// CpuWorker on the real stories260K checkpoint: golden greedy ids, batching and chunking
// invariance, and the compressed-prefill path.

#include "workers/cpu/cpu_worker.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <numeric>
#include <string>

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

// The K and V a row caches in its first `count` slots, concatenated.
std::vector<float> RowContents(const CpuWorker& w, const std::vector<BlockId>& blocks,
                               int32_t count) {
  const int32_t d = w.config().head_dim;
  std::vector<float> out;
  for (int32_t s = 0; s < count; ++s) {
    const float* k = w.KeyAt(blocks[s / kBlockSize], s % kBlockSize);
    const float* v = w.ValueAt(blocks[s / kBlockSize], s % kBlockSize);
    out.insert(out.end(), k, k + d);
    out.insert(out.end(), v, v + d);
  }
  return out;
}

// Blocks of row r of TestSeq slot `slot` (the builder's fixed layout).
std::vector<BlockId> SlotRowBlocks(const ModelConfig& c, int32_t slot, int32_t r) {
  std::vector<BlockId> out;
  for (int32_t b = 0; b < kBlocksPerRow; ++b) {
    out.push_back((slot * c.num_layers * c.num_kv_heads + r) * kBlocksPerRow + b);
  }
  return out;
}

struct PrefillOutcome {
  SequenceResult result;
  std::vector<std::vector<float>> rows;  // Each row's kept K/V.
};

// The one-step compressed prefill of `prompt` into slot `slot`: static plans into the slot's
// rows, adaptive ones into a per-layer reservation over the same blocks.
PrefillOutcome OneStepPrefill(CpuWorker& w, TestSeq* seq, const std::vector<TokenId>& prompt,
                              const KvSelectionSpec& spec) {
  const ModelConfig& c = w.config();
  const int32_t H = c.num_kv_heads, rows = c.num_layers * H;
  Batch batch;
  if (!spec.capacity.empty()) {
    BatchBuilder b(c);
    b.AddSelect(seq, prompt, spec.capacity);
    batch = b.Take();
  } else {
    batch.num_layers = c.num_layers;
    batch.num_kv_heads = H;
    batch.block_size = kBlockSize;
    batch.kv_indptr.assign(rows + 1, 0);
    batch.kv_len_before.assign(rows, 0);
    batch.kv_len_after.assign(rows, 0);
    SequenceStep s;
    s.id = seq->slot;
    s.tokens = prompt;
    s.sample = true;
    s.select = true;
    s.selection = spec;
    s.layer_block_indptr = {0};
    for (int32_t l = 0; l < c.num_layers; ++l) {
      for (int32_t h = 0; h < H; ++h) {
        for (BlockId id : SlotRowBlocks(c, seq->slot, l * H + h)) s.layer_blocks.push_back(id);
      }
      s.layer_block_indptr.push_back(s.layer_blocks.size());
    }
    batch.seqs.push_back(std::move(s));
  }
  auto r = w.Execute(batch);
  EXPECT_TRUE(r.ok()) << r.status();
  PrefillOutcome out{r->seqs[0], {}};
  for (int32_t l = 0; l < c.num_layers; ++l) {
    int32_t next = 0;  // Adaptive: head h takes the next blocks of its layer's reservation.
    for (int32_t h = 0; h < H; ++h) {
      const int32_t kept = out.result.kept_per_head[l * H + h];
      std::vector<BlockId> blocks = SlotRowBlocks(c, seq->slot, l * H + h);
      if (spec.capacity.empty()) {
        const std::vector<BlockId>& all = batch.seqs[0].layer_blocks;
        const int32_t first = batch.seqs[0].layer_block_indptr[l] + next;
        blocks.assign(all.begin() + first,
                      all.begin() + first + (kept + kBlockSize - 1) / kBlockSize);
        next += (kept + kBlockSize - 1) / kBlockSize;
      }
      out.rows.push_back(RowContents(w, blocks, kept));
    }
  }
  return out;
}

// The same prompt prefilled in chunks of `chunk` tokens: plain chunks, then a last chunk of
// at least the window that selects in place.
PrefillOutcome ChunkedPrefill(CpuWorker& w, TestSeq* seq, const std::vector<TokenId>& prompt,
                              const KvSelectionSpec& spec, int32_t chunk) {
  const ModelConfig& c = w.config();
  const int32_t n = prompt.size(), last = std::max(spec.window, n - (n - 1) / chunk * chunk);
  for (int32_t at = 0; at < n - last; at += chunk) {
    BatchBuilder b(c);
    const int32_t end = std::min(at + chunk, n - last);
    b.AddPlain(seq, {prompt.begin() + at, prompt.begin() + end}, false, 0);
    EXPECT_TRUE(w.Execute(b.Take()).ok());
  }
  BatchBuilder b(c);
  b.AddLastChunk(seq, {prompt.end() - last, prompt.end()}, spec);
  auto r = w.Execute(b.Take());
  EXPECT_TRUE(r.ok()) << r.status();
  PrefillOutcome out{r->seqs[0], {}};
  BatchBuilder::Shrink(seq, out.result.kept_per_head);
  for (int32_t row = 0; row < c.num_layers * c.num_kv_heads; ++row) {
    out.rows.push_back(
        RowContents(w, SlotRowBlocks(c, seq->slot, row), out.result.kept_per_head[row]));
  }
  return out;
}

// Chunked compressed prefill (rows in the pool, selection at the last chunk) keeps the same
// tokens, caches the same K/V and samples the same logits as the one-step prefill, for every
// policy's shape of plan, in 1, 2 and many chunks; decoding after it reads the same cache.
TEST(CpuWorkerTest, ChunkedCompressedPrefillEqualsOneStep) {
  auto worker = MakeWorker();
  const ModelConfig& c = worker->config();
  const int32_t H = c.num_kv_heads, rows = c.num_layers * H;
  std::vector<TokenId> prompt = {1};
  for (int i = 0; i < 3; ++i) prompt.insert(prompt.end(), kGolden.begin(), kGolden.end());
  prompt.resize(117);
  std::map<std::string, KvSelectionSpec> specs;
  specs["snapkv"].capacity.assign(rows, 24);
  for (int32_t r = 0; r < rows; ++r) {
    specs["pyramidkv"].capacity.push_back(40 - 30 * (r / H) / (c.num_layers - 1));
    specs["headkv"].capacity.push_back(2 + (r * 37) % 90);
  }
  specs["adakv"].layer_budget.assign(c.num_layers, H * 24);
  worker->set_return_kept_positions(true);
  // The whole prompt's K/V, one slot per position, to check what the kept positions name.
  TestSeq plain{2, {}, 0};
  BatchBuilder all(c);
  all.AddPlain(&plain, prompt, false, 0);
  ASSERT_TRUE(worker->Execute(all.Take()).ok());
  const int32_t n = static_cast<int32_t>(prompt.size()), d = c.head_dim;
  for (const auto& [name, spec] : specs) {
    SCOPED_TRACE(name);
    TestSeq ref{0, {}, 0};
    const PrefillOutcome one = OneStepPrefill(*worker, &ref, prompt, spec);
    // Each row caches, slot by slot, the K/V of the positions it reports (the window's last).
    ASSERT_EQ(one.result.kept_positions.size(),
              static_cast<size_t>(std::accumulate(one.result.kept_per_head.begin(),
                                                  one.result.kept_per_head.end(), 0)));
    const std::vector<int32_t>& kept = one.result.kept_positions;
    for (int32_t r = 0, at = 0; r < rows; at += one.result.kept_per_head[r], ++r) {
      const std::vector<float> dense = RowContents(*worker, SlotRowBlocks(c, 2, r), n);
      const int32_t count = one.result.kept_per_head[r];
      ASSERT_EQ(kept[at + count - 1], n - 1) << "row " << r;
      std::vector<float> want;
      for (int32_t s = 0; s < count; ++s) {
        if (s > 0) ASSERT_LT(kept[at + s - 1], kept[at + s]) << "row " << r;
        want.insert(want.end(), dense.begin() + 2 * d * kept[at + s],
                    dense.begin() + 2 * d * (kept[at + s] + 1));
      }
      EXPECT_EQ(one.rows[r], want) << "row " << r;
    }
    // One chunk is the one-step prefill itself; 100 gives 2 chunks (the last of 17), 13 gives 9.
    for (int32_t chunk : {100, 13}) {
      SCOPED_TRACE(chunk);
      TestSeq seq{1, {}, 0};
      const PrefillOutcome chunked = ChunkedPrefill(*worker, &seq, prompt, spec, chunk);
      EXPECT_EQ(chunked.result.kept_per_head, one.result.kept_per_head);
      EXPECT_EQ(chunked.result.kept_positions, one.result.kept_positions);
      EXPECT_EQ(chunked.result.token, one.result.token);
      EXPECT_EQ(chunked.result.logits, one.result.logits);
      ASSERT_EQ(chunked.rows.size(), one.rows.size());
      for (int32_t r = 0; r < rows; ++r) EXPECT_EQ(chunked.rows[r], one.rows[r]) << "row " << r;
      if (!spec.capacity.empty()) {  // Static rows follow the builder's layout: decode both.
        TestSeq again{0, {}, 0};
        OneStepPrefill(*worker, &again, prompt, spec);
        TokenId next = one.result.token;
        for (int32_t step = 1; step <= 4; ++step) {
          BatchBuilder d1(c), d2(c);
          d1.AddPlain(&again, {next}, true, step);
          d2.AddPlain(&seq, {next}, true, step);
          auto a = worker->Execute(d1.Take());
          auto b = worker->Execute(d2.Take());
          ASSERT_TRUE(a.ok() && b.ok());
          EXPECT_EQ(a->seqs[0].logits, b->seqs[0].logits) << "decode step " << step;
          next = a->seqs[0].token;
        }
      }
    }
  }
}

TEST(CpuWorkerTest, ALastChunkWithoutItsWindowIsAnError) {
  auto worker = MakeWorker();
  const ModelConfig& c = worker->config();
  TestSeq seq{0, {}, 0};
  BatchBuilder first(c);
  first.AddPlain(&seq, {1, 403, 407, 261, 378, 432, 383, 286, 261, 376}, false, 0);
  ASSERT_TRUE(worker->Execute(first.Take()).ok());
  KvSelectionSpec spec;
  spec.capacity.assign(c.num_layers * c.num_kv_heads, 4);
  BatchBuilder last(c);
  last.AddLastChunk(&seq, {298, 315, 421}, spec);  // 3 tokens: the window of 8 spans chunks.
  const absl::Status status = worker->Execute(last.Take()).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), ::testing::HasSubstr("window"));
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
