// Paged per-head decode attention vs the CPU reference: ragged per-head lengths, GQA groups,
// block sizes, both dtypes and head dims, and CUDA-graph replay of a new plan.

#include "kernels/single_launch_decode_attention.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <vector>

#include "kernels/reference.h"
#include "kernels/single_launch_decode_test_util.h"
#include "kernels/test_util.h"

namespace hkv::kernels {
namespace {

using testing::Cache;
using testing::Case;
using testing::CheckDecode;
using testing::DecodeSetup;
using testing::DeviceArray;

void RunAndCheck(const Case& c, const std::vector<int64_t>& lens, int32_t num_kv_heads,
                 std::mt19937& rng) {
  DecodeSetup setup;
  setup.expect_split = true;  // the long rows must be split
  CheckDecode(c, lens, num_kv_heads, rng, setup);
}

class SingleLaunchDecodeAttentionTest : public ::testing::TestWithParam<Case> {};

// Lengths of the issue: 1, 7, 16, 17, 1000, 100000 tokens, plus an empty row.
std::vector<int64_t> RaggedLengths(int32_t num_rows) {
  const int64_t base[] = {1, 7, 16, 17, 1000, 100000, 0, 33};
  std::vector<int64_t> lens(num_rows);
  for (int32_t r = 0; r < num_rows; ++r) lens[r] = base[r % 8];
  return lens;
}

TEST_P(SingleLaunchDecodeAttentionTest, RaggedPerHeadLengths) {
  HKV_REQUIRE_GPU();
  std::mt19937 rng(1234 + GetParam().group * 7 + GetParam().block_size);
  RunAndCheck(GetParam(), RaggedLengths(8), /*num_kv_heads=*/2, rng);
}

TEST_P(SingleLaunchDecodeAttentionTest, ManyShortRows) {
  HKV_REQUIRE_GPU();
  std::mt19937 rng(99);
  std::uniform_int_distribution<int64_t> len(1, 70);
  std::vector<int64_t> lens(64 * 4);
  for (int64_t& l : lens) l = len(rng);
  lens[5] = 20000;  // one long head among many short ones
  RunAndCheck(GetParam(), lens, /*num_kv_heads=*/4, rng);
}

std::vector<Case> Cases() {
  std::vector<Case> out;
  for (DType t : {DType::kBf16, DType::kFp16}) {
    for (int32_t g : {1, 4, 8}) {
      for (int32_t bs : {16, 32}) out.push_back({t, 128, g, bs});
    }
    out.push_back({t, 64, 4, 16});
    out.push_back({t, 64, 2, 32});
    out.push_back({t, 128, 3, 16});
  }
  return out;
}

INSTANTIATE_TEST_SUITE_P(All, SingleLaunchDecodeAttentionTest, ::testing::ValuesIn(Cases()),
                         [](const ::testing::TestParamInfo<Case>& i) {
                           return std::string(testing::Name(i.param.dtype)) + "_d" +
                                  std::to_string(i.param.head_dim) + "_g" +
                                  std::to_string(i.param.group) + "_bs" +
                                  std::to_string(i.param.block_size);
                         });

TEST(SingleLaunchDecodeAttentionPlanTest, RejectsBadOptions) {
  SingleLaunchDecodeOptions opt;
  opt.max_rows = 4;
  opt.max_work_items = 8;
  opt.group_size = 9;
  opt.num_sms = 132;
  std::vector<int32_t> indptr{0, 1}, last{1};
  char ws[16];
  SingleLaunchDecodePlan plan;
  EXPECT_EQ(
      PlanSingleLaunchDecodeAttention(opt, indptr.data(), last.data(), 1, 16, ws, nullptr, &plan),
      cudaErrorInvalidValue);
  opt.group_size = 4;
  EXPECT_EQ(
      PlanSingleLaunchDecodeAttention(opt, indptr.data(), last.data(), 1, 24, ws, nullptr, &plan),
      cudaErrorInvalidValue);  // block size not a power of two
  EXPECT_EQ(
      PlanSingleLaunchDecodeAttention(opt, indptr.data(), last.data(), 5, 16, ws, nullptr, &plan),
      cudaErrorInvalidValue);  // more rows than capacity
  std::vector<int32_t> bad_last{17};
  EXPECT_EQ(PlanSingleLaunchDecodeAttention(opt, indptr.data(), bad_last.data(), 1, 16, ws, nullptr,
                                            &plan),
            cudaErrorInvalidValue);  // last block fill > block size
  std::vector<int32_t> bad_indptr{3, 1};
  EXPECT_EQ(PlanSingleLaunchDecodeAttention(opt, bad_indptr.data(), last.data(), 1, 16, ws, nullptr,
                                            &plan),
            cudaErrorInvalidValue);  // decreasing indptr
  std::vector<SingleLaunchDecodeOptions> bad(4, opt);
  bad[0].cta_threads = 96;
  bad[1].loads_in_flight = 6;
  bad[2].items_per_cta = -1;
  bad[3].split_tokens = -1;
  for (const SingleLaunchDecodeOptions& b : bad) {
    EXPECT_EQ(
        PlanSingleLaunchDecodeAttention(b, indptr.data(), last.data(), 1, 16, ws, nullptr, &plan),
        cudaErrorInvalidValue);
    // Refused before anything runs on the device.
    EXPECT_EQ(PlanSingleLaunchDecodeAttentionOnDevice(b, indptr.data(), last.data(), 1, 16, ws,
                                                      nullptr, &plan),
              cudaErrorInvalidValue);
  }
}

// Host only (runs without a GPU): a plan rebased onto rows of the same lengths equals a fresh
// plan of those rows, and rows of other lengths are refused.
TEST(SingleLaunchDecodeAttentionPlanTest, RebaseEqualsAFreshPlanForRowsOfTheSameLengths) {
  SingleLaunchDecodeOptions opt;
  opt.max_rows = 4;
  opt.max_work_items = 64;
  opt.group_size = 4;
  opt.head_dim = 128;
  opt.num_sms = 2;  // few SMs, so long rows are split into several work items
  // Two "layers" of 3 rows each in one CSR: rows 0-2 and 3-5, with equal lengths per position.
  const std::vector<int32_t> indptr{0, 40, 41, 46, 86, 87, 92};
  const std::vector<int32_t> last{16, 3, 9, 16, 3, 9};
  const std::vector<int32_t> layer0{0, 1, 2}, layer1{3, 4, 5};
  std::vector<int32_t> meta0(SingleLaunchDecodeMetaInts(opt)),
      fresh(SingleLaunchDecodeMetaInts(opt)), rebased(SingleLaunchDecodeMetaInts(opt));
  SingleLaunchDecodePlan p0, p1;
  ASSERT_EQ(BuildSingleLaunchDecodePlan(opt, indptr.data(), last.data(), 3, 16, layer0.data(),
                                        meta0.data(), &p0),
            cudaSuccess);
  ASSERT_GT(p0.num_work_items, 3);  // the 40-block row was split
  ASSERT_EQ(BuildSingleLaunchDecodePlan(opt, indptr.data(), last.data(), 3, 16, layer1.data(),
                                        fresh.data(), &p1),
            cudaSuccess);
  ASSERT_TRUE(RebaseSingleLaunchDecodePlan(p0, meta0.data(), indptr.data(), last.data(), 16,
                                           layer1.data(), rebased.data()));
  EXPECT_EQ(rebased, fresh);
  const std::vector<int32_t> other_last{16, 3, 9, 16, 3, 8};  // row 5 one token shorter
  std::vector<int32_t> untouched(SingleLaunchDecodeMetaInts(opt), -7);
  EXPECT_FALSE(RebaseSingleLaunchDecodePlan(p0, meta0.data(), indptr.data(), other_last.data(), 16,
                                            layer1.data(), untouched.data()));
  EXPECT_EQ(untouched, std::vector<int32_t>(SingleLaunchDecodeMetaInts(opt), -7));
}

// One batch-wide CSR with rows (seq, layer, kv_head), as in common/batch.h: each layer is
// planned through host_row_ids and reads the shared indices array.
TEST(SingleLaunchDecodeAttentionRowIdsTest, PlansEachLayerOfABatchCsr) {
  HKV_REQUIRE_GPU();
  const Case c{DType::kBf16, 128, 4, 16};
  const int32_t seqs = 3, layers = 2, hkv = 2, hq = hkv * c.group, d = c.head_dim;
  std::mt19937 rng(17);
  std::vector<int64_t> lens(seqs * layers * hkv);
  for (size_t r = 0; r < lens.size(); ++r) lens[r] = 1 + (r * 977) % 3000;
  Cache cache(c.block_size, d, hkv);
  cache.Build(lens, c.dtype, rng);
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  SingleLaunchDecodeOptions opt;
  opt.max_rows = seqs * hkv;
  opt.max_work_items = 512;
  opt.group_size = c.group;
  opt.head_dim = d;
  DeviceArray<char> ws(SingleLaunchDecodeWorkspaceBytes(opt));
  const auto q = testing::RandomValues(static_cast<size_t>(seqs) * hq * d, 1.0f, c.dtype, rng);
  DeviceArray<uint16_t> d_q(q.size()), d_out(q.size());
  HKV_CUDA_OK(d_q.Upload(testing::ToStorage(q, c.dtype)));
  for (int32_t layer = 0; layer < layers; ++layer) {
    std::vector<int32_t> ids, indptr{0}, indices, last;
    for (int32_t s = 0; s < seqs; ++s) {
      for (int32_t h = 0; h < hkv; ++h) {
        const int32_t row = (s * layers + layer) * hkv + h;
        ids.push_back(row);
        for (int32_t b = cache.indptr[row]; b < cache.indptr[row + 1]; ++b) {
          indices.push_back(cache.indices[b]);
        }
        indptr.push_back(static_cast<int32_t>(indices.size()));
        last.push_back(cache.last_len[row]);
      }
    }
    SingleLaunchDecodePlan plan;
    HKV_CUDA_OK(PlanSingleLaunchDecodeAttention(opt, cache.indptr.data(), cache.last_len.data(),
                                                seqs * hkv, c.block_size, ws.get(), nullptr, &plan,
                                                ids.data()));
    HKV_CUDA_OK(d_out.Fill(0xff));
    HKV_CUDA_OK(RunSingleLaunchDecodeAttention(plan, cache.View(), c.dtype, d_q.get(), hq * d,
                                               d_out.get(), hq * d, scale, nullptr));
    HKV_CUDA_OK(cudaDeviceSynchronize());
    ref::HostPagedKv host = cache.Host();
    host.indptr = indptr.data();
    host.indices = indices.data();
    host.last_len = last.data();
    std::vector<float> expect(q.size());
    ref::DecodeAttention(q.data(), host, seqs, hq, scale, expect.data());
    EXPECT_LT(testing::RelError(testing::FromStorage(d_out.Download(), c.dtype), expect),
              testing::Tolerance(c.dtype))
        << "layer " << layer;
  }
}

// A graph captured once with fixed_grid replays correctly after re-planning new lengths.
TEST(SingleLaunchDecodeAttentionGraphTest, ReplayAfterReplan) {
  HKV_REQUIRE_GPU();
  const Case c{DType::kBf16, 128, 4, 16};
  const int32_t hkv = 2, seqs = 4, rows = hkv * seqs, hq = hkv * c.group, d = c.head_dim;
  std::mt19937 rng(7);
  // One pool large enough for both plans; page tables differ only in lengths.
  std::vector<int64_t> lens1{3000, 5, 17, 1, 64, 900, 2, 4000};
  std::vector<int64_t> lens2{30, 5000, 1, 1700, 2, 9, 4095, 16};
  Cache cache(c.block_size, d, hkv);
  std::vector<int64_t> cap(rows, 5008);
  cache.Build(cap, c.dtype, rng);
  auto make_last = [&](const std::vector<int64_t>& lens, std::vector<int32_t>* indptr,
                       std::vector<int32_t>* indices, std::vector<int32_t>* last) {
    indptr->assign(1, 0);
    indices->clear();
    last->clear();
    for (int32_t r = 0; r < rows; ++r) {
      const int64_t nb = (lens[r] + c.block_size - 1) / c.block_size;
      for (int64_t b = 0; b < nb; ++b) indices->push_back(cache.indices[cache.indptr[r] + b]);
      indptr->push_back(static_cast<int32_t>(indices->size()));
      last->push_back(static_cast<int32_t>(lens[r] - (nb - 1) * c.block_size));
    }
  };
  const std::vector<float> q =
      testing::RandomValues(static_cast<size_t>(seqs) * hq * d, 1.0f, c.dtype, rng);
  DeviceArray<uint16_t> d_q(q.size()), d_out(q.size());
  HKV_CUDA_OK(d_q.Upload(testing::ToStorage(q, c.dtype)));
  SingleLaunchDecodeOptions opt;
  opt.max_rows = rows;
  opt.max_work_items = 1024;
  opt.group_size = c.group;
  opt.head_dim = d;
  opt.fixed_grid = true;
  DeviceArray<char> ws(SingleLaunchDecodeWorkspaceBytes(opt));
  cudaStream_t stream;
  HKV_CUDA_OK(cudaStreamCreate(&stream));
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  cudaGraphExec_t exec = nullptr;
  for (int round = 0; round < 2; ++round) {
    const std::vector<int64_t>& lens = round == 0 ? lens1 : lens2;
    std::vector<int32_t> indptr, indices, last;
    make_last(lens, &indptr, &indices, &last);
    cache.indptr = indptr;
    cache.indices = indices;
    cache.last_len = last;
    HKV_CUDA_OK(cache.d_indptr.Upload(indptr));
    HKV_CUDA_OK(cache.d_indices.Upload(indices));
    HKV_CUDA_OK(cache.d_last_len.Upload(last));
    SingleLaunchDecodePlan plan;
    HKV_CUDA_OK(PlanSingleLaunchDecodeAttention(opt, indptr.data(), last.data(), rows, c.block_size,
                                                ws.get(), stream, &plan));
    if (round == 0) {
      cudaGraph_t graph;
      HKV_CUDA_OK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal));
      HKV_CUDA_OK(RunSingleLaunchDecodeAttention(plan, cache.View(), c.dtype, d_q.get(), hq * d,
                                                 d_out.get(), hq * d, scale, stream));
      HKV_CUDA_OK(cudaStreamEndCapture(stream, &graph));
      HKV_CUDA_OK(cudaGraphInstantiate(&exec, graph, 0));
      HKV_CUDA_OK(cudaGraphDestroy(graph));
    }
    HKV_CUDA_OK(d_out.Fill(0xff));
    HKV_CUDA_OK(cudaGraphLaunch(exec, stream));
    HKV_CUDA_OK(cudaStreamSynchronize(stream));
    std::vector<float> expect(q.size());
    ref::DecodeAttention(q.data(), cache.Host(), seqs, hq, scale, expect.data());
    EXPECT_LT(testing::RelError(testing::FromStorage(d_out.Download(), c.dtype), expect),
              testing::Tolerance(c.dtype))
        << "round " << round;
  }
  cudaGraphExecDestroy(exec);
  cudaStreamDestroy(stream);
}

}  // namespace
}  // namespace hkv::kernels
