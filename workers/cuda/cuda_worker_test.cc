// The CUDA worker against the fp32 CPU reference on the same random model (head_dim 64, GQA 2):
// plain prefill, chunked prefill, decode, compressed prefill, and mixed batches. bf16 weights
// and activations: logits agree to a relative L2 error of a few 1e-3. Skips without a GPU.

#include "workers/cuda/cuda_worker.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <deque>

#include "gtest/gtest.h"
#include "model/dummy_weights.h"
#include "workers/cpu/cpu_worker.h"
#include "workers/sampler.h"
#include "workers/test_batch_builder.h"
#include "workers/token_history.h"

namespace hkv {
namespace {

using testing::BatchBuilder;
using testing::kBlockSize;
using testing::kBlocksPerRow;
using testing::RelativeError;
using testing::TestSeq;

constexpr double kTolerance = 3e-2;  // Relative L2 error of bf16 logits vs fp32.

ModelConfig SmallConfig() {
  ModelConfig c;
  c.architecture = "LlamaForCausalLM";
  c.name = "dummy";
  c.dim = 256;
  c.hidden_dim = 512;
  c.num_layers = 3;
  c.num_heads = 4;
  c.num_kv_heads = 2;
  c.head_dim = 64;
  c.vocab_size = 512;
  c.max_seq_len = 2048;
  c.rope_style = RopeStyle::kHalf;
  c.rope_theta = 10000.0f;
  return c;
}

class CudaWorkerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!CudaDeviceAvailable()) GTEST_SKIP() << "no CUDA device";
    auto model = MakeDummyModel(SmallConfig(), 7);
    ASSERT_TRUE(model.ok()) << model.status();
    model_ = std::make_shared<const Model>(std::move(*model));
    const int32_t blocks =
        16 * model_->config.num_layers * model_->config.num_kv_heads * kBlocksPerRow;
    cpu_ = std::make_unique<CpuWorker>(model_, blocks, kBlockSize, 4);
    cpu_->set_return_logits(true);
    CudaWorkerOptions o;
    o.block_size = kBlockSize;
    o.num_blocks = blocks;
    o.activation_reserve_bytes = 256 << 20;
    auto gpu = CudaWorker::Create(model_, o);
    ASSERT_TRUE(gpu.ok()) << gpu.status();
    gpu_ = std::move(*gpu);
    gpu_->set_return_logits(true);
  }

  // Runs the same batch on both workers; checks each sampled position's logits agree.
  void RunBoth(const Batch& batch, BatchResult* cpu_out, BatchResult* gpu_out) {
    SCOPED_TRACE("RunBoth");
    auto c = cpu_->Execute(batch);
    auto g = gpu_->Execute(batch);
    ASSERT_TRUE(c.ok()) << c.status();
    ASSERT_TRUE(g.ok()) << g.status();
    ASSERT_EQ(c->seqs.size(), g->seqs.size());
    for (size_t i = 0; i < c->seqs.size(); ++i) {
      ASSERT_EQ(c->seqs[i].logits.size(), g->seqs[i].logits.size());
      if (c->seqs[i].logits.empty()) continue;
      EXPECT_LT(RelativeError(g->seqs[i].logits, c->seqs[i].logits), kTolerance) << "seq " << i;
      EXPECT_EQ(c->seqs[i].kept_per_head, g->seqs[i].kept_per_head);
    }
    *cpu_out = std::move(*c);
    *gpu_out = std::move(*g);
  }

  std::vector<TokenId> Prompt(int n, int salt) {
    std::vector<TokenId> p;
    for (int i = 0; i < n; ++i) p.push_back(3 + (i * 37 + salt * 101) % 500);
    return p;
  }

  std::shared_ptr<const Model> model_;
  std::unique_ptr<CpuWorker> cpu_;
  std::unique_ptr<CudaWorker> gpu_;
};

TEST_F(CudaWorkerTest, PrefillThenDecodeMatchesTheCpuReference) {
  TestSeq seq{0, {}, 0};
  BatchBuilder prefill(model_->config);
  prefill.AddPlain(&seq, Prompt(57, 1), true, 0);
  BatchResult c, g;
  RunBoth(prefill.Take(), &c, &g);
  TokenId next = c.seqs[0].token;
  for (int step = 1; step < 12; ++step) {
    BatchBuilder d(model_->config);
    d.AddPlain(&seq, {next}, true, step);
    RunBoth(d.Take(), &c, &g);
    next = c.seqs[0].token;  // Follow the reference's trajectory.
  }
}

TEST_F(CudaWorkerTest, ChunkedPrefillAttendsToEarlierChunks) {
  TestSeq seq{1, {}, 0};
  std::vector<TokenId> p = Prompt(90, 2);
  BatchResult c, g;
  for (int at = 0; at < 90; at += 37) {
    BatchBuilder b(model_->config);
    const int end = std::min(90, at + 37);
    b.AddPlain(&seq, {p.begin() + at, p.begin() + end}, end == 90, 0);
    RunBoth(b.Take(), &c, &g);
  }
}

TEST_F(CudaWorkerTest, CompressedPrefillKeepsThePlanAndDecodes) {
  const ModelConfig& cfg = model_->config;
  const std::vector<TokenId> p = Prompt(100, 3);
  // Keep everything: the compressed path must agree with the dense reference.
  std::vector<int32_t> all(cfg.num_layers * cfg.num_kv_heads, 100);
  TestSeq full{2, {}, 0};
  BatchBuilder b1(cfg);
  b1.AddSelect(&full, p, all);
  BatchResult c, g;
  RunBoth(b1.Take(), &c, &g);
  // Real compression: each head its own cap; kept counts must match exactly.
  std::vector<int32_t> caps(cfg.num_layers * cfg.num_kv_heads);
  for (size_t i = 0; i < caps.size(); ++i) caps[i] = 5 + static_cast<int32_t>(i * 11) % 40;
  TestSeq seq{3, {}, 0};
  BatchBuilder b2(cfg);
  b2.AddSelect(&seq, p, caps);
  auto cr = cpu_->Execute(b2.Take());
  BatchBuilder b2g(cfg);
  TestSeq seq_g{4, {}, 0};
  b2g.AddSelect(&seq_g, p, caps);
  auto gr = gpu_->Execute(b2g.Take());
  ASSERT_TRUE(cr.ok() && gr.ok()) << gr.status();
  EXPECT_EQ(cr->seqs[0].kept_per_head, gr->seqs[0].kept_per_head);
  for (size_t i = 0; i < caps.size(); ++i) EXPECT_EQ(gr->seqs[0].kept_per_head[i], caps[i] + 8);
  // Selections may differ at near-ties in bf16; logits stay close.
  EXPECT_LT(RelativeError(gr->seqs[0].logits, cr->seqs[0].logits), 0.1);
  TokenId next = cr->seqs[0].token;
  for (int step = 1; step < 6; ++step) {
    BatchBuilder dc(cfg), dg(cfg);
    dc.AddPlain(&seq, {next}, true, step);
    dg.AddPlain(&seq_g, {next}, true, step);
    auto c2 = cpu_->Execute(dc.Take());
    auto g2 = gpu_->Execute(dg.Take());
    ASSERT_TRUE(c2.ok() && g2.ok()) << g2.status();
    EXPECT_LT(RelativeError(g2->seqs[0].logits, c2->seqs[0].logits), 0.1);
    next = c2->seqs[0].token;
  }
}

TEST_F(CudaWorkerTest, MixedBatchMatchesTheCpuReference) {
  const ModelConfig& cfg = model_->config;
  TestSeq a{5, {}, 0}, b{6, {}, 0}, sel{7, {}, 0}, chunk{8, {}, 0};
  BatchResult c, g;
  {
    BatchBuilder warm(cfg);
    warm.AddPlain(&a, Prompt(20, 4), true, 0);
    warm.AddPlain(&b, Prompt(33, 5), true, 0);
    RunBoth(warm.Take(), &c, &g);
  }
  std::vector<int32_t> caps(cfg.num_layers * cfg.num_kv_heads, 200);
  BatchBuilder mixed(cfg);
  mixed.AddPlain(&chunk, Prompt(45, 6), true, 0);
  mixed.AddPlain(&a, {c.seqs[0].token}, true, 1);
  mixed.AddSelect(&sel, Prompt(64, 7), caps);
  mixed.AddPlain(&b, {c.seqs[1].token}, true, 1);
  RunBoth(mixed.Take(), &c, &g);
  for (const auto& r : g.seqs) EXPECT_GE(r.token, 0);
}

// Chunked compressed prefill on the GPU: the earlier chunks are plain, the last one scores
// the keys in the paged pool and compacts each row in place. Kept counts equal the one-step
// prefill's and the CPU's exactly; logits and the decode after it stay close to both (bf16
// selections may differ at near-ties), and a clear greedy token is the same. 2 and 3 chunks,
// with a decode and a one-step select in the last chunk's batch.
// adakv's last chunk on the GPU: the device splits each layer's budget over the whole
// prompt's scores and compacts every head within its own row, as the CPU worker does. Per-layer
// totals are exact; a head's count may differ from the CPU's only where bf16 scores tie across
// heads, so heads are compared with a small slack.
TEST_F(CudaWorkerTest, ChunkedAdaptivePrefillMatchesTheCpu) {
  const ModelConfig& cfg = model_->config;
  const int32_t L = cfg.num_layers, H = cfg.num_kv_heads;
  const std::vector<TokenId> p = Prompt(120, 12);
  KvSelectionSpec spec;
  spec.layer_budget.assign(L, 20 * H);
  spec.adaptive_floor_fraction = 0.2f;
  TestSeq seq{3, {}, 0};
  BatchResult c, g;
  for (int32_t at = 0; at < 100; at += 50) {
    BatchBuilder b(cfg);
    b.AddPlain(&seq, {p.begin() + at, p.begin() + at + 50}, false, 0);
    RunBoth(b.Take(), &c, &g);
  }
  BatchBuilder last(cfg);
  last.AddLastChunk(&seq, {p.begin() + 100, p.end()}, spec);
  const Batch last_batch = last.Take();
  auto lc = cpu_->Execute(last_batch);
  auto lg = gpu_->Execute(last_batch);
  ASSERT_TRUE(lc.ok()) << lc.status();
  ASSERT_TRUE(lg.ok()) << lg.status();
  const std::vector<int32_t>& kc = lc->seqs[0].kept_per_head;
  const std::vector<int32_t>& kg = lg->seqs[0].kept_per_head;
  ASSERT_EQ(kg.size(), kc.size());
  int32_t differing = 0;
  for (int32_t l = 0; l < L; ++l) {
    int32_t sum_c = 0, sum_g = 0;
    for (int32_t h = 0; h < H; ++h) {
      const int32_t r = l * H + h;
      sum_c += kc[r];
      sum_g += kg[r];
      EXPECT_GE(kg[r], 8) << "row " << r;  // the window at least
      EXPECT_LE(std::abs(kg[r] - kc[r]), 14) << "row " << r;
      differing += kg[r] != kc[r];
    }
    EXPECT_EQ(sum_g, sum_c) << "layer " << l;
  }
  std::printf("adakv chunked: %d of %zu heads kept a different count than the CPU\n", differing,
              kc.size());
  EXPECT_LT(RelativeError(lg->seqs[0].logits, lc->seqs[0].logits), 0.1);
}

TEST_F(CudaWorkerTest, ChunkedCompressedPrefillMatchesOneStep) {
  const ModelConfig& cfg = model_->config;
  const std::vector<TokenId> p = Prompt(120, 9);
  std::vector<int32_t> caps(cfg.num_layers * cfg.num_kv_heads);
  for (size_t i = 0; i < caps.size(); ++i) caps[i] = 4 + static_cast<int32_t>(i * 13) % 50;
  KvSelectionSpec spec;
  spec.capacity = caps;
  TestSeq one{9, {}, 0};
  BatchBuilder b1(cfg);
  b1.AddSelect(&one, p, caps);
  auto ref = gpu_->Execute(b1.Take());
  ASSERT_TRUE(ref.ok()) << ref.status();
  int32_t slot = 10;
  for (int32_t chunk : {100, 50}) {  // 100 + 20, and 50 + 50 + 20
    SCOPED_TRACE(chunk);
    TestSeq seq{slot++, {}, 0}, side{slot++, {}, 0}, sel{slot++, {}, 0};
    BatchResult c, g;
    BatchBuilder warm(cfg);
    warm.AddPlain(&side, Prompt(17, 10), true, 0);
    RunBoth(warm.Take(), &c, &g);
    const TokenId side_next = c.seqs[0].token;
    for (int32_t at = 0; at + 20 < 120; at += chunk) {
      BatchBuilder b(cfg);
      b.AddPlain(&seq, {p.begin() + at, p.begin() + std::min(at + chunk, 100)}, false, 0);
      RunBoth(b.Take(), &c, &g);
    }
    BatchBuilder last(cfg);
    last.AddPlain(&side, {side_next}, true, 1);
    last.AddLastChunk(&seq, {p.begin() + 100, p.end()}, spec);
    last.AddSelect(&sel, Prompt(40, 11), std::vector<int32_t>(caps.size(), 9));
    // Not RunBoth: real compression may pick differently at bf16 near-ties, so logits are
    // compared at a looser tolerance; kept counts must equal the CPU's exactly.
    const Batch last_batch = last.Take();
    auto lc = cpu_->Execute(last_batch);
    auto lg = gpu_->Execute(last_batch);
    ASSERT_TRUE(lc.ok() && lg.ok()) << lg.status();
    c = std::move(*lc);
    g = std::move(*lg);
    for (size_t i = 0; i < c.seqs.size(); ++i) {
      EXPECT_EQ(g.seqs[i].kept_per_head, c.seqs[i].kept_per_head) << "seq " << i;
      EXPECT_LT(RelativeError(g.seqs[i].logits, c.seqs[i].logits), 0.1) << "seq " << i;
    }
    const SequenceResult& got = g.seqs[1];
    EXPECT_EQ(got.kept_per_head, ref->seqs[0].kept_per_head);
    for (size_t i = 0; i < caps.size(); ++i) EXPECT_EQ(got.kept_per_head[i], caps[i] + 8);
    EXPECT_LT(RelativeError(got.logits, ref->seqs[0].logits), 0.1);
    if (testing::ClearGreedyMargin(ref->seqs[0].logits, kTolerance)) {
      EXPECT_EQ(got.token, ref->seqs[0].token);
    }
    BatchBuilder::Shrink(&seq, got.kept_per_head);
    TokenId next = c.seqs[1].token;
    for (int step = 1; step < 5; ++step) {  // The compacted rows decode like the CPU's.
      BatchBuilder d(cfg);
      d.AddPlain(&seq, {next}, true, step);
      const Batch decode = d.Take();
      auto c2 = cpu_->Execute(decode);
      auto g2 = gpu_->Execute(decode);
      ASSERT_TRUE(c2.ok() && g2.ok()) << g2.status();
      EXPECT_LT(RelativeError(g2->seqs[0].logits, c2->seqs[0].logits), 0.1) << "step " << step;
      next = c2->seqs[0].token;
    }
  }
}

TEST_F(CudaWorkerTest, DecodeGraphsMatchEagerSteps) {
  // A second GPU worker that never uses graphs: decode steps replayed from graphs (padded to
  // 8 and to 4 sequences) must give the same tokens and logits as eager steps, and both must
  // stay within the bf16 tolerance of the CPU reference.
  CudaWorkerOptions o;
  o.block_size = kBlockSize;
  o.num_blocks = 16 * model_->config.num_layers * model_->config.num_kv_heads * kBlocksPerRow;
  o.activation_reserve_bytes = 256 << 20;
  o.cuda_graph_max_batch = 0;
  auto eager = CudaWorker::Create(model_, o);
  ASSERT_TRUE(eager.ok()) << eager.status();
  (*eager)->set_return_logits(true);
  const ModelConfig& cfg = model_->config;
  std::vector<TestSeq> seqs;
  for (int i = 0; i < 5; ++i) seqs.push_back(TestSeq{10 + i, {}, 0});
  std::vector<TokenId> next(5);
  BatchBuilder prefill(cfg);
  for (int i = 0; i < 5; ++i) prefill.AddPlain(&seqs[i], Prompt(10 + 9 * i, 10 + i), true, 0);
  const Batch pb = prefill.Take();
  BatchResult c, g;
  RunBoth(pb, &c, &g);
  ASSERT_TRUE((*eager)->Execute(pb).ok());
  for (int i = 0; i < 5; ++i) next[i] = c.seqs[i].token;
  for (int step = 1; step < 10; ++step) {
    const int n = step < 6 ? 5 : 3;  // graphs of 8, then of 4 sequences
    BatchBuilder d(cfg);
    for (int i = 0; i < n; ++i) d.AddPlain(&seqs[i], {next[i]}, true, step);
    const Batch db = d.Take();
    RunBoth(db, &c, &g);
    auto e = (*eager)->Execute(db);
    ASSERT_TRUE(e.ok()) << e.status();
    for (int i = 0; i < n; ++i) {
      EXPECT_EQ(e->seqs[i].token, g.seqs[i].token) << "step " << step << " seq " << i;
      EXPECT_LT(RelativeError(g.seqs[i].logits, e->seqs[i].logits), 1e-2);
      next[i] = c.seqs[i].token;
    }
  }
  EXPECT_EQ(gpu_->graph_steps(), 9);
  EXPECT_EQ(gpu_->graphs_captured(), 2);
  EXPECT_EQ((*eager)->graph_steps(), 0);
  EXPECT_EQ((*eager)->eager_steps(), 10);
}

// Async steps: a second worker launches each step before awaiting the one before it, its
// decodes' inputs kPendingToken (gathered on the device from the previous step's samples). The
// same batches as the synchronous worker's, so its tokens must be equal; graph steps (padded to
// 8) and eager mixed steps (a prompt joining beside the pending decodes) both.
TEST_F(CudaWorkerTest, AsyncStepsWithPendingTokensMatchSynchronousSteps) {
  CudaWorkerOptions o;
  o.block_size = kBlockSize;
  o.num_blocks = 16 * model_->config.num_layers * model_->config.num_kv_heads * kBlocksPerRow;
  o.activation_reserve_bytes = 256 << 20;
  auto made = CudaWorker::Create(model_, o);
  ASSERT_TRUE(made.ok()) << made.status();
  CudaWorker& async = **made;
  ASSERT_TRUE(async.SupportsAsyncSteps());
  const ModelConfig& cfg = model_->config;
  std::vector<TestSeq> sync_seqs, async_seqs;
  for (int i = 0; i < 6; ++i) {
    sync_seqs.push_back(TestSeq{i, {}, 0});
    async_seqs.push_back(TestSeq{i, {}, 0});
  }
  // Step 0 prefills sequences 0-4; step 4 adds sequence 5's prompt beside the decodes.
  std::vector<TokenId> next(6, -1);
  std::vector<std::vector<TokenId>> sync_tokens(6), async_tokens(6);
  std::deque<Batch> in_flight;  // the async worker's launched batches, kept alive
  auto batch_for = [&](int step, std::vector<TestSeq>& seqs, bool pending) {
    BatchBuilder b(cfg);
    for (int i = 0; i < 5; ++i) {
      if (step == 0) {
        b.AddPlain(&seqs[i], Prompt(10 + 9 * i, 30 + i), true, 0);
      } else {
        b.AddPlain(&seqs[i], {pending ? kPendingToken : next[i]}, true, step);
      }
    }
    if (step == 4) b.AddPlain(&seqs[5], Prompt(23, 40), true, 0);
    if (step > 4) b.AddPlain(&seqs[5], {pending ? kPendingToken : next[5]}, true, step - 4);
    return b.Take();
  };
  constexpr int kSteps = 9;
  for (int step = 0; step < kSteps; ++step) {
    auto r = gpu_->Execute(batch_for(step, sync_seqs, false));
    ASSERT_TRUE(r.ok()) << r.status();
    for (size_t j = 0; j < r->seqs.size(); ++j) {
      const int i = static_cast<int>(r->seqs[j].id);
      next[i] = r->seqs[j].token;
      sync_tokens[i].push_back(r->seqs[j].token);
    }
  }
  auto collect = [&]() {
    auto r = async.Await();
    ASSERT_TRUE(r.ok()) << r.status();
    for (const SequenceResult& s : r->seqs) async_tokens[s.id].push_back(s.token);
    in_flight.pop_front();
  };
  for (int step = 0; step < kSteps; ++step) {
    // Step 4's new prompt has known tokens; everyone else's input is the step before's sample.
    in_flight.push_back(batch_for(step, async_seqs, true));
    ASSERT_TRUE(async.Launch(in_flight.back()).ok());
    if (in_flight.size() == 2) collect();
  }
  collect();
  for (int i = 0; i < 6; ++i) EXPECT_EQ(async_tokens[i], sync_tokens[i]) << "sequence " << i;
  EXPECT_GT(async.graph_steps(), 0);
  EXPECT_GT(async.eager_steps(), 1);
  // A pending token of a sequence the step before did not sample is refused.
  TestSeq fresh{7, {}, 0};
  BatchBuilder chunk(cfg);
  chunk.AddPlain(&fresh, Prompt(9, 50), false, 0);
  ASSERT_TRUE(async.Execute(chunk.Take()).ok());
  BatchBuilder bad(cfg);
  bad.AddPlain(&fresh, {kPendingToken}, true, 0);
  const absl::Status refused = async.Execute(bad.Take()).status();
  EXPECT_EQ(refused.code(), absl::StatusCode::kInvalidArgument) << refused;
  EXPECT_NE(refused.message().find("pending"), std::string::npos) << refused;
}

TEST_F(CudaWorkerTest, FusedDecodeMatchesTheUnfusedKernels) {
  // A second GPU worker with options.fused_decode on, and a third with every kernel separate
  // (fused_rope_kv_append off: Rope, then AppendKvSlots): their prefill and decode steps of 1
  // and 3 sequences (graphs, then eager) give the same tokens and logits as gpu_ (the default
  // kernels: RoPE + KV append in one kernel, the rest unfused) within bf16 rounding, and stay
  // within the tolerance of the CPU reference. Then the phase profile of an eager step names
  // each kernel set's phases once per layer.
  CudaWorkerOptions o;
  o.block_size = kBlockSize;
  o.num_blocks = 16 * model_->config.num_layers * model_->config.num_kv_heads * kBlocksPerRow;
  o.activation_reserve_bytes = 256 << 20;
  CudaWorkerOptions so = o;
  so.fused_rope_kv_append = false;
  o.fused_decode = true;
  auto fused = CudaWorker::Create(model_, o);
  ASSERT_TRUE(fused.ok()) << fused.status();
  (*fused)->set_return_logits(true);
  auto separate = CudaWorker::Create(model_, so);
  ASSERT_TRUE(separate.ok()) << separate.status();
  (*separate)->set_return_logits(true);
  const ModelConfig& cfg = model_->config;
  std::vector<TestSeq> seqs;
  // Slots 5..7: the pool holds 16 slots' blocks (a slot of 16 or more is outside it).
  for (int i = 0; i < 3; ++i) seqs.push_back(TestSeq{5 + i, {}, 0});
  std::vector<TokenId> next(3);
  BatchBuilder prefill(cfg);
  for (int i = 0; i < 3; ++i) prefill.AddPlain(&seqs[i], Prompt(20 + 7 * i, 20 + i), true, 0);
  const Batch pb = prefill.Take();
  BatchResult c, g;
  RunBoth(pb, &c, &g);
  for (CudaWorker* w : {fused->get(), separate->get()}) {
    auto fp = w->Execute(pb);
    ASSERT_TRUE(fp.ok()) << fp.status();
    for (int i = 0; i < 3; ++i) {
      EXPECT_LT(RelativeError(fp->seqs[i].logits, g.seqs[i].logits), 1e-2) << "prefill seq " << i;
    }
  }
  for (int i = 0; i < 3; ++i) next[i] = c.seqs[i].token;
  for (int step = 1; step < 9; ++step) {
    const int n = step % 2 == 1 ? 1 : 3;
    BatchBuilder d(cfg);
    for (int i = 0; i < n; ++i) d.AddPlain(&seqs[i], {next[i]}, true, step);
    const Batch db = d.Take();
    RunBoth(db, &c, &g);
    for (CudaWorker* w : {fused->get(), separate->get()}) {
      w->set_graphs_enabled(step < 5);  // graph replays, then eager steps
      auto f = w->Execute(db);
      ASSERT_TRUE(f.ok()) << f.status();
      for (int i = 0; i < n; ++i) {
        if (testing::ClearGreedyMargin(g.seqs[i].logits, 1e-2)) {
          EXPECT_EQ(f->seqs[i].token, g.seqs[i].token) << "step " << step << " seq " << i;
        }
        EXPECT_LT(RelativeError(f->seqs[i].logits, g.seqs[i].logits), 1e-2);
        EXPECT_LT(RelativeError(f->seqs[i].logits, c.seqs[i].logits), kTolerance);
      }
    }
    for (int i = 0; i < n; ++i) next[i] = c.seqs[i].token;
  }
  EXPECT_GT((*fused)->graph_steps(), 0);
  EXPECT_GT((*separate)->graph_steps(), 0);
  BatchBuilder d(cfg);
  d.AddPlain(&seqs[0], {next[0]}, true, 9);
  const Batch profiled = d.Take();
  auto profile = [&](CudaWorker& w) {
    w.set_phase_profile(true);
    const int64_t graphs = w.graph_steps();
    EXPECT_TRUE(w.Execute(profiled).ok());
    EXPECT_EQ(w.graph_steps(), graphs);  // profiled steps run eagerly
    std::vector<CudaWorker::PhaseTime> p = w.phase_profile();
    w.set_phase_profile(false);
    return p;
  };
  auto calls = [](const std::vector<CudaWorker::PhaseTime>& p, const std::string& name) {
    for (const auto& x : p) {
      if (x.name == name) {
        EXPECT_GT(x.us_per_step, 0) << name;
        return x.calls_per_step;
      }
    }
    return 0.0;
  };
  (*fused)->set_graphs_enabled(true);
  const auto fused_phases = profile(**fused);
  const auto unfused_phases = profile(*gpu_);
  (*separate)->set_graphs_enabled(true);
  const auto separate_phases = profile(**separate);
  const double L = cfg.num_layers;
  EXPECT_EQ(calls(fused_phases, "attn_norm+qkv"), L);
  EXPECT_EQ(calls(fused_phases, "rope+kv_append"), L);
  EXPECT_EQ(calls(fused_phases, "ffn_norm+gate_up+swiglu"), L);
  EXPECT_EQ(calls(fused_phases, "down_proj+residual"), L);
  EXPECT_EQ(calls(fused_phases, "attn_norm"), 0);
  EXPECT_EQ(calls(fused_phases, "rope"), 0);
  EXPECT_EQ(calls(unfused_phases, "attn_norm"), L);
  EXPECT_EQ(calls(unfused_phases, "ffn_norm"), L);
  EXPECT_EQ(calls(unfused_phases, "rope+kv_append"), L);
  EXPECT_EQ(calls(unfused_phases, "rope"), 0);
  EXPECT_EQ(calls(separate_phases, "rope"), L);
  EXPECT_EQ(calls(separate_phases, "kv_append"), L);
  EXPECT_EQ(calls(separate_phases, "rope+kv_append"), 0);
  EXPECT_EQ(calls(separate_phases, "attn_norm"), L);
  EXPECT_EQ(calls(unfused_phases, "lm_head"), 1);
}

TEST(CudaWorkerDummyTest, RandomWeightsOnTheDeviceAreDeterministic) {
  if (!CudaDeviceAvailable()) GTEST_SKIP() << "no CUDA device";
  auto model = std::make_shared<Model>();
  model->config = SmallConfig();
  model->device_dummy_seed = 5;
  CudaWorkerOptions o;
  o.block_size = kBlockSize;
  o.num_blocks = 4096;
  o.activation_reserve_bytes = 64 << 20;
  std::vector<std::vector<float>> logits;
  for (int run = 0; run < 2; ++run) {
    auto w = CudaWorker::Create(model, o);
    ASSERT_TRUE(w.ok()) << w.status();
    EXPECT_NE((*w)->sizing().find("random on the GPU"), std::string::npos);
    (*w)->set_return_logits(true);
    TestSeq seq{1, {}, 0};
    BatchBuilder b(model->config);
    b.AddPlain(&seq, {5, 6, 7, 8, 9}, true, 0);
    auto r = (*w)->Execute(b.Take());
    ASSERT_TRUE(r.ok()) << r.status();
    logits.push_back(r->seqs[0].logits);
  }
  EXPECT_EQ(logits[0], logits[1]);
  float lo = 1e30f, hi = -1e30f;
  for (float x : logits[0]) {
    ASSERT_TRUE(std::isfinite(x));
    lo = std::min(lo, x);
    hi = std::max(hi, x);
  }
  EXPECT_GT(hi - lo, 1e-3f);  // not a constant
}

TEST(CudaWorkerSupportTest, NamesTheShapeTheKernelsLack) {
  ModelConfig c = SmallConfig();
  EXPECT_TRUE(CudaWorker::Supports(c).ok());
  c.head_dim = 8;
  EXPECT_EQ(CudaWorker::Supports(c).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(CudaWorker::Supports(c).message().find("head_dim"), std::string::npos);
}

TEST_F(CudaWorkerTest, RejectsMalformedBatches) {
  TestSeq seq{9, {}, 0};
  BatchBuilder b(model_->config);
  b.AddPlain(&seq, {1, 2, 3}, true, 0);
  Batch bad = b.Take();
  bad.kv_indices[0] = 1 << 30;
  EXPECT_EQ(gpu_->Execute(bad).status().code(), absl::StatusCode::kInvalidArgument);
}

// Penalties (with their history kept by the worker), min_tokens bans, n samples of a prefill,
// and logprobs: the CUDA worker's answers equal the CPU sampler's on the logits it returned.
TEST_F(CudaWorkerTest, PenalisedSamplingAndLogprobsMatchTheCpuSamplerOnItsLogits) {
  const ModelConfig& cfg = model_->config;
  const std::vector<TokenId> prompt = Prompt(40, 5);
  StepSampling p;
  p.presence_penalty = 0.8f;
  p.frequency_penalty = 0.4f;
  p.repetition_penalty = 1.3f;
  p.min_tokens = 3;
  p.logprobs = 5;
  TokenHistories reference;
  TestSeq seq{5, {}, 0};
  TokenId next = 0;
  for (int step = 0; step < 10; ++step) {
    BatchBuilder b(cfg);
    b.AddPlain(&seq, step == 0 ? prompt : std::vector<TokenId>{next}, true, step);
    Batch batch = b.Take();
    SequenceStep& st = batch.seqs[0];
    st.sampling = p;
    st.num_prompt_tokens = static_cast<int32_t>(prompt.size());
    if (step == 0) {
      st.min_tokens_banned = {prompt[0], prompt[1], 7};
      st.num_samples = 3;
    }
    auto g = gpu_->Execute(batch);
    ASSERT_TRUE(g.ok()) << g.status();
    reference.Observe(batch);
    const SequenceResult& got = g->seqs[0];
    std::vector<float> logits = got.logits;  // raw, as the kernels saw them
    ASSERT_EQ(logits.size(), static_cast<size_t>(cfg.vocab_size));
    SequenceResult want;
    SampleSequence(st, reference, logits, &want);
    EXPECT_EQ(got.token, want.token) << "step " << step;
    EXPECT_EQ(got.extra_tokens, want.extra_tokens) << "step " << step;
    ASSERT_EQ(got.logprobs.size(), want.logprobs.size()) << "step " << step;
    for (size_t i = 0; i < want.logprobs.size(); ++i) {
      EXPECT_EQ(got.logprobs[i].token, want.logprobs[i].token);
      EXPECT_NEAR(got.logprobs[i].logprob, want.logprobs[i].logprob, 1e-3);
      EXPECT_EQ(got.logprobs[i].top_ids, want.logprobs[i].top_ids);
      ASSERT_EQ(got.logprobs[i].top_logprobs.size(), 5u);
      for (int k = 0; k < 5; ++k) {
        EXPECT_NEAR(got.logprobs[i].top_logprobs[k], want.logprobs[i].top_logprobs[k], 1e-3);
      }
    }
    if (step < 3) {
      EXPECT_NE(got.token, prompt[0]);
      EXPECT_NE(got.token, 7);
    }
    next = got.token;
  }
}

}  // namespace
}  // namespace hkv
