// The CUDA worker's delta path on the host, against the full-CSR path, over random runs of the
// real KvCacheManager: admissions, prefill chunks, decode, per-head shrinks (HeadKV), forks
// with copy-on-write, frees, re-admissions under old ids, batches in random order and subsets,
// padded graph steps and delta-stream resets. Each step lays out the same step twice (the
// batch's CSR; the delta applied to a PageTableMirror) and checks that the gather plan, applied
// to the last step's table, yields exactly the CSR layout's indices_a, and that every other
// array is identical. Steady decode must send only the new blocks.

#include "workers/cuda/device_page_table.h"

#include <algorithm>
#include <iostream>
#include <random>
#include <vector>

#include "block_manager/kv_cache_manager.h"
#include "common/page_table_mirror.h"
#include "gtest/gtest.h"
#include "workers/cuda/step_layout.h"

namespace hkv {
namespace {

constexpr int32_t kLayers = 2, kHeads = 3, kBlock = 4;

struct DeltaRun {
  KvCacheManager kv;
  PageTableMirror mirror;
  DeviceTableState device;
  std::vector<int32_t> device_indices;  // what the device's last table holds
  std::vector<RequestId> live;
  RequestId next_id = 1;
  int64_t copied = 0, uploaded = 0;  // entries the device copied / received

  static KvCacheConfig Config() {
    KvCacheConfig c;
    c.num_layers = kLayers;
    c.num_kv_heads = kHeads;
    c.block_size = kBlock;
    c.num_blocks = 20000;
    return c;
  }
  DeltaRun() : kv(Config()) {}

  // One step of `ids`, each growing every row by tokens[i]; checks both layouts agree.
  // Returns the entries the step uploaded.
  int64_t Step(const std::vector<RequestId>& ids, const std::vector<int32_t>& tokens,
               int32_t graph_batch) {
    Batch csr;
    csr.num_layers = kLayers;
    csr.num_kv_heads = kHeads;
    csr.block_size = kBlock;
    for (size_t i = 0; i < ids.size(); ++i) {
      const std::vector<int32_t> before =
          kv.Contains(ids[i]) ? kv.RowLengths(ids[i]) : std::vector<int32_t>(kLayers * kHeads, 0);
      EXPECT_TRUE(kv.AppendUniform(ids[i], tokens[i]));
      csr.kv_len_before.insert(csr.kv_len_before.end(), before.begin(), before.end());
      SequenceStep s;
      s.id = ids[i];
      s.start_pos = before[0];
      s.tokens.assign(tokens[i], 1);
      s.sample = true;
      csr.seqs.push_back(s);
    }
    csr.block_copies = kv.TakeBlockCopies();
    Batch delta = csr;
    KvCsr full = kv.ExportCsr(ids);
    csr.kv_indptr = full.indptr;
    csr.kv_indices = full.indices;
    csr.kv_len_after = full.num_tokens;
    delta.kv_delta = kv.ExportDelta(ids);
    delta.kv_len_after = kv.ExportRowTokens(ids);
    EXPECT_EQ(delta.kv_len_after, csr.kv_len_after);

    const StepLayoutShape shape{kLayers, kHeads, 100, kBlock, 0};
    auto want = BuildHostStep(csr, shape, graph_batch);
    EXPECT_TRUE(want.ok()) << want.status();
    if (delta.kv_delta->reset) device.valid = false;
    EXPECT_TRUE(mirror.Apply(*delta.kv_delta).ok());
    std::vector<const std::vector<BlockTable>*> rows;
    EXPECT_TRUE(mirror.RowsOf(delta, &rows).ok());
    auto got = BuildHostStep(delta, shape, graph_batch, StepRows{&rows, true});
    EXPECT_TRUE(got.ok()) << got.status();
    if (!want.ok() || !got.ok()) return 0;
    EXPECT_TRUE(got->device_indices);
    EXPECT_TRUE(got->indices_a.empty());
    PlanTableGather(delta, rows, device, &*got);
    const std::vector<int32_t> built = ApplyTableGather(*got, device_indices);
    const std::vector<int32_t>& want_indices =
        want->shared_indices ? *want->batch_indices : want->indices_a;
    EXPECT_EQ(built, want_indices);
    EXPECT_EQ(got->indptr_a, want->indptr_a);
    EXPECT_EQ(got->last_a, want->last_a);
    EXPECT_EQ(got->indptr_b, want->indptr_b);
    EXPECT_EQ(got->indices_b, want->indices_b);
    EXPECT_EQ(got->last_b, want->last_b);
    EXPECT_EQ(got->slots, want->slots);
    EXPECT_EQ(got->ids, want->ids);
    EXPECT_EQ(got->order, want->order);
    for (size_t s = 0; s < got->gather_segments.size(); s += 4) {
      EXPECT_LE(got->gather_segments[s + 2], kMaxTableSegment);
      EXPECT_GT(got->gather_segments[s + 2], 0);
    }
    device_indices = built;
    RecordDeviceTable(delta, *got, &device);
    copied += static_cast<int64_t>(built.size() - got->gather_upload.size());
    uploaded += static_cast<int64_t>(got->gather_upload.size());
    return static_cast<int64_t>(got->gather_upload.size());
  }
};

TEST(DevicePageTableTest, DeltaLayoutsEqualFullCsrLayoutsOverRandomRuns) {
  int64_t copied = 0, uploaded = 0, forks = 0, shrinks = 0, resets = 0, graphs = 0;
  for (uint32_t seed = 1; seed <= 6; ++seed) {
    std::mt19937 rng(seed);
    DeltaRun run;
    for (int step = 0; step < 250; ++step) {
      // Admissions, frees, forks, shrinks between steps.
      if (run.live.size() < 12 && rng() % 3 == 0) {
        const RequestId id =
            rng() % 5 == 0 && run.next_id > 3 ? rng() % (run.next_id - 1) + 1 : run.next_id++;
        if (std::find(run.live.begin(), run.live.end(), id) == run.live.end()) {
          run.live.push_back(id);
        }
      }
      if (!run.live.empty() && rng() % 17 == 0) {
        const size_t i = rng() % run.live.size();
        run.kv.Free(run.live[i]);
        run.live.erase(run.live.begin() + i);
      }
      if (!run.live.empty() && rng() % 23 == 0 && run.live.size() < 12) {
        const RequestId src = run.live[rng() % run.live.size()];
        if (run.kv.Contains(src) && run.kv.Fork(src, run.next_id).ok()) {
          run.live.push_back(run.next_id);
          ++forks;
        }
        ++run.next_id;
      }
      if (!run.live.empty() && rng() % 19 == 0) {  // a HeadKV prompt cut to per-head counts
        const RequestId id = run.live[rng() % run.live.size()];
        if (run.kv.Contains(id)) {
          std::vector<int32_t> kept = run.kv.RowLengths(id);
          for (int32_t& k : kept) k = static_cast<int32_t>(rng() % (k + 1));
          EXPECT_TRUE(run.kv.Shrink(id, kept).ok());
          ++shrinks;
        }
      }
      if (rng() % 41 == 0) {
        run.kv.ResetDeltaTracking();
        ++resets;
      }
      // The step: a random subset in random order; new sequences prefill, others decode or
      // take a chunk.
      std::vector<RequestId> ids;
      for (RequestId id : run.live) {
        if (rng() % 5 != 0) ids.push_back(id);
      }
      if (ids.empty()) continue;
      std::shuffle(ids.begin(), ids.end(), rng);
      std::vector<int32_t> tokens;
      bool all_decode = true;
      for (RequestId id : ids) {
        const bool fresh = !run.kv.Contains(id);
        tokens.push_back(fresh || rng() % 7 == 0 ? 1 + static_cast<int32_t>(rng() % 13) : 1);
        all_decode = all_decode && !fresh && tokens.back() == 1;
      }
      // Decode-only steps sometimes pad to a graph size (rows of padding follow the decodes).
      const int32_t graph = all_decode && rng() % 2 == 0 ? GraphBatchFor(ids.size(), 256) : 0;
      graphs += graph > 0;
      run.Step(ids, tokens, graph);
      if (::testing::Test::HasFailure()) {
        FAIL() << "seed " << seed << " step " << step;
      }
    }
    copied += run.copied;
    uploaded += run.uploaded;
  }
  std::cout << copied << " entries copied on the device, " << uploaded << " uploaded; " << forks
            << " forks, " << shrinks << " shrinks, " << resets << " resets, " << graphs
            << " padded steps\n";
  EXPECT_GT(copied, 2 * uploaded);
  EXPECT_GT(forks, 10);
  EXPECT_GT(shrinks, 10);
  EXPECT_GT(resets, 5);
  EXPECT_GT(graphs, 50);
}

TEST(DevicePageTableTest, SteadyDecodeUploadsOnlyNewBlocks) {
  DeltaRun run;
  std::vector<RequestId> ids = {1, 2, 3, 4};
  run.Step(ids, {5, 9, 13, 3}, 0);  // prefills: everything uploaded
  int64_t uploaded = 0, steps = 0;
  for (int i = 0; i < 40; ++i, ++steps) uploaded += run.Step(ids, {1, 1, 1, 1}, 4);
  // Each sequence's rows take a block once every kBlock steps: 40 / 4 x 4 seqs x 6 rows.
  EXPECT_EQ(uploaded, 40 / kBlock * 4 * kLayers * kHeads);
  // The same sequences in another order still copy rather than upload.
  std::reverse(ids.begin(), ids.end());
  EXPECT_LE(run.Step(ids, {1, 1, 1, 1}, 0), 4 * kLayers * kHeads);
}

}  // namespace
}  // namespace hkv
