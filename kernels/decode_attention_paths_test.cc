// Decode attention paths beyond the basic split-K: short ragged rows at batch 1 for every
// group size and head dim, every kernel variant, CTAs running many items, rows split over
// many items (merged by the last item in the kernel), empty rows, repeated calls of one plan,
// and the device planner (same splits as the host planner, graph replay after the page tables
// change on the device). Host-only planner checks run without a GPU.

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include "kernels/reference.h"
#include "kernels/single_launch_decode_attention.h"
#include "kernels/single_launch_decode_plan.h"
#include "kernels/single_launch_decode_test_util.h"
#include "kernels/test_util.h"

namespace hkv::kernels {
namespace {

using testing::Cache;
using testing::Case;
using testing::CheckDecode;
using testing::DecodeSetup;
using testing::DeviceArray;

// CSR page table (block size bs) of rows with the given lengths, blocks in order.
void MakeTable(const std::vector<int64_t>& lens, int32_t bs, std::vector<int32_t>* indptr,
               std::vector<int32_t>* last) {
  indptr->assign(1, 0);
  last->clear();
  for (int64_t len : lens) {
    const int64_t nb = (len + bs - 1) / bs;
    indptr->push_back(indptr->back() + static_cast<int32_t>(nb));
    last->push_back(nb == 0 ? 0 : static_cast<int32_t>(len - (nb - 1) * bs));
  }
}

// Checks the invariants of a work list: every row's tokens covered once by its items, whose
// slots are contiguous from row_split_begin in token order; CTA runs contiguous and covering
// every item; counters zero.
void ExpectWellFormed(const SingleLaunchDecodeOptions& o, const std::vector<int32_t>& meta,
                      const std::vector<int64_t>& lens) {
  const single_launch_decode::MetaLayout L(o);
  const int32_t items = meta[0], ctas = meta[1];
  ASSERT_LE(items, o.max_work_items);
  ASSERT_LE(ctas, items);
  EXPECT_EQ(meta[L.cta_begin], 0);
  EXPECT_EQ(meta[L.cta_begin + ctas], items);
  for (int32_t c = 0; c < ctas; ++c) EXPECT_LE(meta[L.cta_begin + c], meta[L.cta_begin + c + 1]);
  std::vector<int32_t> by_slot(items, -1);
  for (int32_t i = 0; i < items; ++i) {
    const int32_t slot = meta[L.work_slot + i];
    ASSERT_GE(slot, 0);
    ASSERT_LT(slot, items);
    ASSERT_EQ(by_slot[slot], -1) << "slot used twice";
    by_slot[slot] = i;
  }
  for (size_t r = 0; r < lens.size(); ++r) {
    const int32_t begin = meta[L.row_split_begin + r], ns = meta[L.row_num_splits + r];
    EXPECT_EQ(meta[L.row_arrivals + r], 0);
    ASSERT_GE(ns, 1);
    int64_t next = 0;
    for (int32_t s = begin; s < begin + ns; ++s) {
      const int32_t i = by_slot[s];
      ASSERT_EQ(meta[L.work_row + i], static_cast<int32_t>(r));
      EXPECT_EQ(meta[L.work_begin + i], next) << "row " << r;
      next = meta[L.work_end + i];
    }
    EXPECT_EQ(next, lens[r]) << "row " << r;
  }
}

// Host only: the planner's CTA runs and splits, default and tuned.
TEST(SingleLaunchDecodePlanShapeTest, CtaRunsAndSplitsCoverEveryRow) {
  std::mt19937 rng(5);
  std::uniform_int_distribution<int64_t> short_len(0, 400);
  std::vector<int64_t> lens(32 * 8);
  for (int64_t& l : lens) l = short_len(rng);
  lens[3] = 30000;
  std::vector<int32_t> indptr, last;
  MakeTable(lens, 16, &indptr, &last);
  for (int32_t items_per_cta : {0, 1, 3}) {
    for (int32_t split : {0, 64}) {
      SingleLaunchDecodeOptions o;
      o.max_rows = static_cast<int32_t>(lens.size());
      o.max_work_items = 4096;
      o.group_size = 4;
      o.num_sms = 4;  // 16 CTA slots: items outnumber them, so CTAs run several
      o.items_per_cta = items_per_cta;
      o.split_tokens = split;
      std::vector<int32_t> meta(SingleLaunchDecodeMetaInts(o));
      SingleLaunchDecodePlan plan;
      ASSERT_EQ(BuildSingleLaunchDecodePlan(o, indptr.data(), last.data(), o.max_rows, 16, nullptr,
                                            meta.data(), &plan),
                cudaSuccess);
      ExpectWellFormed(o, meta, lens);
      EXPECT_EQ(meta[0], plan.num_work_items);
      EXPECT_EQ(meta[1], plan.num_ctas);
      if (items_per_cta == 1) EXPECT_EQ(plan.num_ctas, plan.num_work_items);
      if (items_per_cta == 0) EXPECT_EQ(plan.num_ctas, 16);
      if (split > 0) {
        const single_launch_decode::MetaLayout L(o);
        for (size_t r = 0; r < lens.size(); ++r) {
          EXPECT_EQ(meta[L.row_num_splits + r], single_launch_decode::SplitsFor(lens[r], split));
        }
      }
    }
  }
}

class SingleLaunchDecodeShortRowsTest : public ::testing::TestWithParam<Case> {};

// Batch 1 of HeadKV-like rows (tens to hundreds of tokens), as the latency-bound call sees.
TEST_P(SingleLaunchDecodeShortRowsTest, BatchOneShortRaggedRows) {
  HKV_REQUIRE_GPU();
  std::mt19937 rng(31 + GetParam().group);
  const std::vector<int64_t> lens{72, 23, 310, 129, 96, 1, 255, 64};
  CheckDecode(GetParam(), lens, /*num_kv_heads=*/8, rng, DecodeSetup{});
}

// Batch 32 of short rows: many CTAs, several items each when the defaults group them.
TEST_P(SingleLaunchDecodeShortRowsTest, Batch32ShortRaggedRows) {
  HKV_REQUIRE_GPU();
  std::mt19937 rng(77 + GetParam().group);
  std::uniform_int_distribution<int64_t> len(8, 400);
  std::vector<int64_t> lens(32 * 8);
  for (int64_t& l : lens) l = len(rng);
  DecodeSetup setup;
  setup.tune.ctas_per_sm = 1;
  setup.tune.num_sms = 16;  // fewer slots than items: CTAs run runs of items
  CheckDecode(GetParam(), lens, /*num_kv_heads=*/8, rng, setup);
}

std::vector<Case> ShortCases() {
  std::vector<Case> out;
  for (int32_t d : {64, 128}) {
    for (int32_t g = 1; g <= 8; ++g) out.push_back({DType::kBf16, d, g, 16});
  }
  out.push_back({DType::kFp16, 128, 4, 32});
  return out;
}

std::string CaseName(const ::testing::TestParamInfo<Case>& i) {
  return std::string(testing::Name(i.param.dtype)) + "_d" + std::to_string(i.param.head_dim) +
         "_g" + std::to_string(i.param.group) + "_bs" + std::to_string(i.param.block_size);
}

INSTANTIATE_TEST_SUITE_P(All, SingleLaunchDecodeShortRowsTest, ::testing::ValuesIn(ShortCases()),
                         CaseName);

struct Variant {
  int32_t threads, loads, items_per_cta, split;
  bool prefetch = false;
};

class SingleLaunchDecodeVariantTest : public ::testing::TestWithParam<Variant> {};

// Every kernel variant and CTA grouping, rows split over many items, run twice on one plan
// (the arrival counters must be back at zero for the second run).
TEST_P(SingleLaunchDecodeVariantTest, MatchesReference) {
  HKV_REQUIRE_GPU();
  const Variant& v = GetParam();
  DecodeSetup setup;
  setup.tune.cta_threads = v.threads;
  setup.tune.loads_in_flight = v.loads;
  setup.tune.items_per_cta = v.items_per_cta;
  setup.tune.split_tokens = v.split;
  setup.tune.prefetch = v.prefetch;
  setup.repeats = 2;
  setup.expect_split = true;
  const std::vector<int64_t> lens{1,    7,  300, 5000, 0, 33,  129, 64,
                                  2048, 17, 0,   4097, 1, 640, 90,  12000};
  for (const Case& c : {Case{DType::kBf16, 128, 4, 16}, Case{DType::kFp16, 64, 8, 32},
                        Case{DType::kBf16, 128, 1, 16}}) {
    std::mt19937 rng(v.threads + v.loads * 3 + v.items_per_cta * 5 + v.split + v.prefetch);
    CheckDecode(c, lens, /*num_kv_heads=*/4, rng, setup);
  }
}

std::vector<Variant> Variants() {
  std::vector<Variant> out;
  for (int32_t t : {128, 256}) {
    for (int32_t l : {4, 8}) {
      out.push_back({t, l, 0, 0});
      out.push_back({t, l, 3, 64});  // ~300 items over ~100 CTAs
    }
  }
  for (int32_t t : {128, 256}) {
    out.push_back({t, 4, 0, 0, true});
    out.push_back({t, 4, 3, 64, true});
  }
  out.push_back({128, 4, 1, 128});
  return out;
}

INSTANTIATE_TEST_SUITE_P(All, SingleLaunchDecodeVariantTest, ::testing::ValuesIn(Variants()),
                         [](const ::testing::TestParamInfo<Variant>& i) {
                           return "t" + std::to_string(i.param.threads) + "_l" +
                                  std::to_string(i.param.loads) + "_i" +
                                  std::to_string(i.param.items_per_cta) + "_s" +
                                  std::to_string(i.param.split) + (i.param.prefetch ? "_p" : "");
                         });

TEST(SingleLaunchDecodeEmptyRowsTest, AllAndSomeRowsEmpty) {
  HKV_REQUIRE_GPU();
  std::mt19937 rng(3);
  const Case c{DType::kBf16, 128, 4, 16};
  CheckDecode(c, std::vector<int64_t>(8, 0), 4, rng, DecodeSetup{});
  DecodeSetup device;
  device.device_plan = true;
  CheckDecode(c, std::vector<int64_t>(8, 0), 4, rng, device);
  CheckDecode(c, {0, 0, 3000, 0, 1, 0, 0, 40000}, 4, rng, DecodeSetup{});
  CheckDecode(c, {0, 0, 3000, 0, 1, 0, 0, 40000}, 4, rng, device);
}

// The device planner with a fixed split gives the host plan's splits: bit-identical outputs,
// and the same items per row.
TEST(SingleLaunchDecodeDevicePlanTest, FixedSplitMatchesHostPlanBitForBit) {
  HKV_REQUIRE_GPU();
  const Case c{DType::kBf16, 128, 4, 16};
  const std::vector<int64_t> lens{1, 7, 300, 5000, 0, 33, 129, 64, 20000, 17, 0, 4097};
  for (int32_t split : {64, 256}) {
    DecodeSetup host, device;
    host.tune.split_tokens = device.tune.split_tokens = split;
    device.device_plan = true;
    std::mt19937 rng1(11), rng2(11);
    const std::vector<uint16_t> a = CheckDecode(c, lens, 4, rng1, host);
    const std::vector<uint16_t> b = CheckDecode(c, lens, 4, rng2, device);
    EXPECT_EQ(a, b) << "split " << split;
  }
}

// Automatic splits on the device: long, short, many and empty rows against the reference.
TEST(SingleLaunchDecodeDevicePlanTest, AutomaticSplitsMatchReference) {
  HKV_REQUIRE_GPU();
  DecodeSetup device;
  device.device_plan = true;
  device.repeats = 2;
  std::mt19937 rng(21);
  CheckDecode({DType::kBf16, 128, 4, 16}, {1, 7, 16, 17, 1000, 100000, 0, 33}, 2, rng, device);
  std::uniform_int_distribution<int64_t> len(1, 300);
  std::vector<int64_t> many(64 * 8);
  for (int64_t& l : many) l = len(rng);
  CheckDecode({DType::kFp16, 64, 2, 32}, many, 8, rng, device);
}

// The device work list against the host one: same item count and splits per row, and a
// malformed row planned empty and counted.
TEST(SingleLaunchDecodeDevicePlanTest, WorkListMatchesHostPlanner) {
  HKV_REQUIRE_GPU();
  std::vector<int64_t> lens{5000, 3, 0, 700, 12000, 64, 1, 999};
  std::vector<int32_t> indptr, last;
  MakeTable(lens, 16, &indptr, &last);
  SingleLaunchDecodeOptions o;
  o.max_rows = 8;
  o.max_work_items = 512;
  o.group_size = 4;
  o.split_tokens = 256;
  std::vector<int32_t> host(SingleLaunchDecodeMetaInts(o));
  SingleLaunchDecodePlan hp, dp;
  ASSERT_EQ(
      BuildSingleLaunchDecodePlan(o, indptr.data(), last.data(), 8, 16, nullptr, host.data(), &hp),
      cudaSuccess);
  DeviceArray<int32_t> d_indptr(indptr.size()), d_last(last.size());
  HKV_CUDA_OK(d_indptr.Upload(indptr));
  HKV_CUDA_OK(d_last.Upload(last));
  DeviceArray<char> ws(SingleLaunchDecodeWorkspaceBytes(o));
  HKV_CUDA_OK(PlanSingleLaunchDecodeAttentionOnDevice(o, d_indptr.get(), d_last.get(), 8, 16,
                                                      ws.get(), nullptr, &dp));
  HKV_CUDA_OK(cudaDeviceSynchronize());
  std::vector<int32_t> dev(SingleLaunchDecodeMetaInts(o));
  HKV_CUDA_OK(cudaMemcpy(dev.data(), ws.get(), dev.size() * 4, cudaMemcpyDeviceToHost));
  ExpectWellFormed(o, dev, lens);
  const single_launch_decode::MetaLayout L(o);
  EXPECT_EQ(dev[0], host[0]);
  EXPECT_EQ(dev[2], 0);
  for (int32_t r = 0; r < 8; ++r) {
    EXPECT_EQ(dev[L.row_num_splits + r], host[L.row_num_splits + r]) << "row " << r;
  }
  last[1] = 17;  // > block size: malformed
  HKV_CUDA_OK(d_last.Upload(last));
  HKV_CUDA_OK(PlanSingleLaunchDecodeAttentionOnDevice(o, d_indptr.get(), d_last.get(), 8, 16,
                                                      ws.get(), nullptr, &dp));
  HKV_CUDA_OK(cudaMemcpy(dev.data(), ws.get(), dev.size() * 4, cudaMemcpyDeviceToHost));
  EXPECT_EQ(dev[2], 1);
  EXPECT_EQ(dev[L.row_num_splits + 1], 1);
}

// One graph holds the device planner and the attention call; the page tables change on the
// device (new lengths and blocks, row ids and row count from device memory) and the replay
// follows them.
TEST(SingleLaunchDecodeDevicePlanTest, GraphReplayAfterTablesChange) {
  HKV_REQUIRE_GPU();
  const Case c{DType::kBf16, 128, 4, 16};
  const int32_t hkv = 2, seqs = 4, rows = hkv * seqs, hq = hkv * c.group, d = c.head_dim;
  std::mt19937 rng(8);
  Cache cache(c.block_size, d, hkv);
  // CSR of 2 * rows rows; the planned rows are picked by device row ids.
  cache.Build(std::vector<int64_t>(2 * rows, 6000), c.dtype, rng);
  const std::vector<std::vector<int64_t>> rounds{{3000, 5, 17, 1, 64, 900, 2, 4000},
                                                 {30, 5000, 1, 1700, 0, 9, 4095, 16}};
  const std::vector<float> q =
      testing::RandomValues(static_cast<size_t>(seqs) * hq * d, 1.0f, c.dtype, rng);
  DeviceArray<uint16_t> d_q(q.size()), d_out(q.size());
  HKV_CUDA_OK(d_q.Upload(testing::ToStorage(q, c.dtype)));
  DeviceArray<int32_t> d_ids(rows), d_rows(1);
  SingleLaunchDecodeOptions opt;
  opt.max_rows = rows;
  opt.max_work_items = 1024;
  opt.group_size = c.group;
  opt.head_dim = d;
  int dev = 0;
  HKV_CUDA_OK(cudaGetDevice(&dev));
  HKV_CUDA_OK(cudaDeviceGetAttribute(&opt.num_sms, cudaDevAttrMultiProcessorCount, dev));
  DeviceArray<char> ws(SingleLaunchDecodeWorkspaceBytes(opt));
  cudaStream_t stream;
  HKV_CUDA_OK(cudaStreamCreate(&stream));
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  const std::vector<int32_t> full_indptr = cache.indptr, full_indices = cache.indices;
  cudaGraphExec_t exec = nullptr;
  for (size_t round = 0; round < rounds.size(); ++round) {
    // Row r of this round is CSR row 2r + round; its blocks are a prefix of that row's.
    std::vector<int32_t> ids(rows), indptr{0}, indices, last;
    for (int32_t r = 0; r < 2 * rows; ++r) {
      const int64_t len = r % 2 == static_cast<int32_t>(round) ? rounds[round][r / 2] : 7;
      const int64_t nb = (len + c.block_size - 1) / c.block_size;
      for (int64_t b = 0; b < nb; ++b) indices.push_back(full_indices[full_indptr[r] + b]);
      indptr.push_back(static_cast<int32_t>(indices.size()));
      last.push_back(nb == 0 ? 0 : static_cast<int32_t>(len - (nb - 1) * c.block_size));
    }
    for (int32_t r = 0; r < rows; ++r) ids[r] = 2 * r + static_cast<int32_t>(round);
    HKV_CUDA_OK(cache.d_indptr.Upload(indptr));
    HKV_CUDA_OK(cache.d_indices.Upload(indices));
    HKV_CUDA_OK(cache.d_last_len.Upload(last));
    HKV_CUDA_OK(d_ids.Upload(ids));
    HKV_CUDA_OK(d_rows.Upload({rows}));
    if (round == 0) {
      cudaGraph_t graph;
      SingleLaunchDecodePlan plan;
      HKV_CUDA_OK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal));
      HKV_CUDA_OK(PlanSingleLaunchDecodeAttentionOnDevice(
          opt, cache.d_indptr.get(), cache.d_last_len.get(), rows, c.block_size, ws.get(), stream,
          &plan, d_ids.get(), d_rows.get()));
      HKV_CUDA_OK(RunSingleLaunchDecodeAttention(plan, cache.View(), c.dtype, d_q.get(), hq * d,
                                                 d_out.get(), hq * d, scale, stream));
      HKV_CUDA_OK(cudaStreamEndCapture(stream, &graph));
      HKV_CUDA_OK(cudaGraphInstantiate(&exec, graph, 0));
      HKV_CUDA_OK(cudaGraphDestroy(graph));
    }
    HKV_CUDA_OK(d_out.Fill(0xff));
    HKV_CUDA_OK(cudaGraphLaunch(exec, stream));
    HKV_CUDA_OK(cudaStreamSynchronize(stream));
    std::vector<int32_t> sel_indptr{0}, sel_indices, sel_last;
    for (int32_t id : ids) {
      for (int32_t b = indptr[id]; b < indptr[id + 1]; ++b) sel_indices.push_back(indices[b]);
      sel_indptr.push_back(static_cast<int32_t>(sel_indices.size()));
      sel_last.push_back(last[id]);
    }
    ref::HostPagedKv host = cache.Host();
    host.indptr = sel_indptr.data();
    host.indices = sel_indices.data();
    host.last_len = sel_last.data();
    std::vector<float> expect(q.size());
    ref::DecodeAttention(q.data(), host, seqs, hq, scale, expect.data());
    EXPECT_LT(testing::RelError(testing::FromStorage(d_out.Download(), c.dtype), expect),
              testing::Tolerance(c.dtype))
        << "round " << round;
  }
  cudaGraphExecDestroy(exec);
  cudaStreamDestroy(stream);
}

}  // namespace
}  // namespace hkv::kernels
