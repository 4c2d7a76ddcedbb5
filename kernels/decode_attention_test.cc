// Paged per-head decode attention vs the CPU reference: ragged per-head lengths, GQA groups,
// block sizes, both dtypes and head dims, and CUDA-graph replay of a new plan.

#include "kernels/decode_attention.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "kernels/reference.h"
#include "kernels/test_util.h"

namespace hkv::kernels {
namespace {

using testing::DeviceArray;

// A random paged cache whose rows have the given lengths; blocks shuffled in the pool.
struct Cache {
  Cache(int32_t bs, int32_t d, int32_t hkv) : block_size(bs), head_dim(d), num_kv_heads(hkv) {}
  int32_t block_size, head_dim, num_kv_heads;
  std::vector<int32_t> indptr{0}, indices, last_len;
  std::vector<float> k, v;  // pool floats (storage-rounded)
  DeviceArray<int32_t> d_indptr, d_indices, d_last_len;
  DeviceArray<uint16_t> d_k, d_v;

  void Build(const std::vector<int64_t>& lens, DType dtype, std::mt19937& rng) {
    int64_t blocks = 0;
    for (int64_t len : lens) blocks += (len + block_size - 1) / block_size;
    blocks += 3;  // spare blocks nobody references
    std::vector<int32_t> perm(blocks);
    std::iota(perm.begin(), perm.end(), 0);
    std::shuffle(perm.begin(), perm.end(), rng);
    int64_t next = 0;
    for (int64_t len : lens) {
      const int64_t nb = (len + block_size - 1) / block_size;
      for (int64_t b = 0; b < nb; ++b) indices.push_back(perm[next++]);
      indptr.push_back(static_cast<int32_t>(indices.size()));
      last_len.push_back(nb == 0 ? 0 : static_cast<int32_t>(len - (nb - 1) * block_size));
    }
    const size_t n = static_cast<size_t>(blocks) * block_size * head_dim;
    k = testing::RandomValues(n, 1.0f, dtype, rng);
    v = testing::RandomValues(n, 1.0f, dtype, rng);
    Upload(dtype);
  }
  void Upload(DType dtype) {
    d_indptr.Resize(indptr.size());
    d_indptr.Upload(indptr);
    d_indices.Resize(std::max<size_t>(1, indices.size()));
    d_indices.Upload(indices);
    d_last_len.Resize(std::max<size_t>(1, last_len.size()));
    d_last_len.Upload(last_len);
    d_k.Resize(k.size());
    d_k.Upload(testing::ToStorage(k, dtype));
    d_v.Resize(v.size());
    d_v.Upload(testing::ToStorage(v, dtype));
  }
  PagedKvView View() const {
    return {d_indptr.get(), d_indices.get(), d_last_len.get(),
            d_k.get(),      d_v.get(),       static_cast<int64_t>(block_size) * head_dim,
            block_size,     num_kv_heads,    head_dim};
  }
  ref::HostPagedKv Host() const {
    return {indptr.data(), indices.data(), last_len.data(),
            k.data(),      v.data(),       static_cast<int64_t>(block_size) * head_dim,
            block_size,    num_kv_heads,   head_dim};
  }
};

struct Case {
  DType dtype;
  int32_t head_dim, group, block_size;
  int32_t kv_stages = kDefaultKvStages;  // DecodePlanOptions::kv_stages
};

class DecodeAttentionTest : public ::testing::TestWithParam<Case> {};

// Lengths of the issue: 1, 7, 16, 17, 1000, 100000 tokens, plus an empty row.
std::vector<int64_t> RaggedLengths(int32_t num_rows) {
  const int64_t base[] = {1, 7, 16, 17, 1000, 100000, 0, 33};
  std::vector<int64_t> lens(num_rows);
  for (int32_t r = 0; r < num_rows; ++r) lens[r] = base[r % 8];
  return lens;
}

void RunAndCheck(const Case& c, const std::vector<int64_t>& lens, int32_t num_kv_heads,
                 std::mt19937& rng) {
  const int32_t num_rows = static_cast<int32_t>(lens.size());
  const int32_t num_seqs = num_rows / num_kv_heads;
  const int32_t hq = num_kv_heads * c.group, d = c.head_dim;
  Cache cache(c.block_size, d, num_kv_heads);
  cache.Build(lens, c.dtype, rng);
  const std::vector<float> q =
      testing::RandomValues(static_cast<size_t>(num_seqs) * hq * d, 1.0f, c.dtype, rng);
  DeviceArray<uint16_t> d_q(q.size()), d_out(q.size());
  HKV_CUDA_OK(d_q.Upload(testing::ToStorage(q, c.dtype)));
  HKV_CUDA_OK(d_out.Fill(0xff));  // NaN poison: every element must be written

  DecodePlanOptions opt;
  opt.max_rows = num_rows;
  opt.max_work_items = 4096;
  opt.group_size = c.group;
  opt.head_dim = d;
  opt.kv_stages = c.kv_stages;
  DeviceArray<char> ws(DecodeWorkspaceBytes(opt));
  DecodePlan plan;
  HKV_CUDA_OK(PlanDecodeAttention(opt, cache.indptr.data(), cache.last_len.data(), num_rows,
                                  c.block_size, ws.get(), nullptr, &plan));
  EXPECT_GT(plan.num_work_items, num_rows);  // the 100k row must be split
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  HKV_CUDA_OK(RunDecodeAttention(plan, cache.View(), c.dtype, d_q.get(),
                                 static_cast<int64_t>(hq) * d, d_out.get(),
                                 static_cast<int64_t>(hq) * d, scale, nullptr));
  HKV_CUDA_OK(cudaDeviceSynchronize());
  std::vector<float> expect(q.size());
  ref::DecodeAttention(q.data(), cache.Host(), num_seqs, hq, scale, expect.data());
  const std::vector<float> got = testing::FromStorage(d_out.Download(), c.dtype);
  EXPECT_LT(testing::RelError(got, expect), testing::Tolerance(c.dtype));
  // Per row too, so a short row hidden by long ones still counts.
  for (int32_t s = 0; s < num_seqs; ++s) {
    for (int32_t h = 0; h < hq; ++h) {
      const size_t off = (static_cast<size_t>(s) * hq + h) * d;
      std::vector<float> g(got.begin() + off, got.begin() + off + d);
      std::vector<float> e(expect.begin() + off, expect.begin() + off + d);
      if (lens[s * num_kv_heads + h / c.group] == 0) {
        for (float x : g) ASSERT_EQ(x, 0.0f) << "empty row must give zeros";
      } else {
        ASSERT_LT(testing::RelError(g, e), 2 * testing::Tolerance(c.dtype))
            << "seq " << s << " head " << h << " len " << lens[s * num_kv_heads + h / c.group];
      }
    }
  }
}

TEST_P(DecodeAttentionTest, RaggedPerHeadLengths) {
  HKV_REQUIRE_GPU();
  std::mt19937 rng(1234 + GetParam().group * 7 + GetParam().block_size);
  RunAndCheck(GetParam(), RaggedLengths(8), /*num_kv_heads=*/2, rng);
}

TEST_P(DecodeAttentionTest, ManyShortRows) {
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
  // The other ways K/V reach the math: registers (0) and the longer rings.
  for (int32_t stages : {0, 3, kMaxKvStages}) {
    for (int32_t g : {1, 4, 8}) out.push_back({DType::kBf16, 128, g, 16, stages});
    out.push_back({DType::kFp16, 64, 4, 32, stages});
  }
  return out;
}

INSTANTIATE_TEST_SUITE_P(All, DecodeAttentionTest, ::testing::ValuesIn(Cases()),
                         [](const ::testing::TestParamInfo<Case>& i) {
                           return std::string(testing::Name(i.param.dtype)) + "_d" +
                                  std::to_string(i.param.head_dim) + "_g" +
                                  std::to_string(i.param.group) + "_bs" +
                                  std::to_string(i.param.block_size) + "_s" +
                                  std::to_string(i.param.kv_stages);
                         });

TEST(DecodeAttentionKvStagesTest, EveryRingGivesTheRegisterPathsBits) {
  // The K/V vectors reach the same math whichever way they travel: outputs equal bit for bit.
  HKV_REQUIRE_GPU();
  std::mt19937 rng(5);
  const int32_t hkv = 4, group = 4, d = 128, hq = hkv * group;
  std::vector<int64_t> lens = RaggedLengths(16);
  Cache cache(16, d, hkv);
  cache.Build(lens, DType::kBf16, rng);
  const int32_t rows = static_cast<int32_t>(lens.size()), seqs = rows / hkv;
  const auto q = testing::RandomValues(static_cast<size_t>(seqs) * hq * d, 1.0f, DType::kBf16, rng);
  DeviceArray<uint16_t> d_q(q.size());
  HKV_CUDA_OK(d_q.Upload(testing::ToStorage(q, DType::kBf16)));
  std::vector<std::vector<uint16_t>> outs;
  for (int32_t stages : {0, 2, 3, kMaxKvStages}) {
    DecodePlanOptions opt;
    opt.max_rows = rows;
    opt.max_work_items = 4096;
    opt.group_size = group;
    opt.head_dim = d;
    opt.kv_stages = stages;
    DeviceArray<char> ws(DecodeWorkspaceBytes(opt));
    DeviceArray<uint16_t> out(q.size());
    DecodePlan plan;
    HKV_CUDA_OK(PlanDecodeAttention(opt, cache.indptr.data(), cache.last_len.data(), rows, 16,
                                    ws.get(), nullptr, &plan));
    HKV_CUDA_OK(RunDecodeAttention(plan, cache.View(), DType::kBf16, d_q.get(), hq * d, out.get(),
                                   hq * d, 0.088f, nullptr));
    HKV_CUDA_OK(cudaDeviceSynchronize());
    outs.push_back(out.Download());
    EXPECT_EQ(outs.back(), outs.front()) << "kv_stages " << stages;
  }
}

TEST(DecodeAttentionPlanTest, RejectsBadOptions) {
  DecodePlanOptions opt;
  opt.max_rows = 4;
  opt.max_work_items = 8;
  opt.group_size = 9;
  opt.num_sms = 132;
  std::vector<int32_t> indptr{0, 1}, last{1};
  char ws[16];
  DecodePlan plan;
  EXPECT_EQ(PlanDecodeAttention(opt, indptr.data(), last.data(), 1, 16, ws, nullptr, &plan),
            cudaErrorInvalidValue);
  opt.group_size = 4;
  EXPECT_EQ(PlanDecodeAttention(opt, indptr.data(), last.data(), 1, 24, ws, nullptr, &plan),
            cudaErrorInvalidValue);  // block size not a power of two
  EXPECT_EQ(PlanDecodeAttention(opt, indptr.data(), last.data(), 5, 16, ws, nullptr, &plan),
            cudaErrorInvalidValue);  // more rows than capacity
  std::vector<int32_t> bad_last{17};
  EXPECT_EQ(PlanDecodeAttention(opt, indptr.data(), bad_last.data(), 1, 16, ws, nullptr, &plan),
            cudaErrorInvalidValue);  // last block fill > block size
  std::vector<int32_t> bad_indptr{3, 1};
  EXPECT_EQ(PlanDecodeAttention(opt, bad_indptr.data(), last.data(), 1, 16, ws, nullptr, &plan),
            cudaErrorInvalidValue);  // decreasing indptr
  for (int32_t stages : {-1, 1, kMaxKvStages + 1}) {
    opt.kv_stages = stages;
    EXPECT_EQ(PlanDecodeAttention(opt, indptr.data(), last.data(), 1, 16, ws, nullptr, &plan),
              cudaErrorInvalidValue)
        << "kv_stages " << stages;
  }
}

// Host only (runs without a GPU): a plan rebased onto rows of the same lengths equals a fresh
// plan of those rows, and rows of other lengths are refused.
TEST(DecodeAttentionPlanTest, RebaseEqualsAFreshPlanForRowsOfTheSameLengths) {
  DecodePlanOptions opt;
  opt.max_rows = 4;
  opt.max_work_items = 64;
  opt.group_size = 4;
  opt.head_dim = 128;
  opt.num_sms = 2;  // few SMs, so long rows are split into several work items
  // Two "layers" of 3 rows each in one CSR: rows 0-2 and 3-5, with equal lengths per position.
  const std::vector<int32_t> indptr{0, 40, 41, 46, 86, 87, 92};
  const std::vector<int32_t> last{16, 3, 9, 16, 3, 9};
  const std::vector<int32_t> layer0{0, 1, 2}, layer1{3, 4, 5};
  std::vector<int32_t> meta0(DecodeMetaInts(opt)), fresh(DecodeMetaInts(opt)),
      rebased(DecodeMetaInts(opt));
  DecodePlan p0, p1;
  ASSERT_EQ(
      BuildDecodePlan(opt, indptr.data(), last.data(), 3, 16, layer0.data(), meta0.data(), &p0),
      cudaSuccess);
  ASSERT_GT(p0.num_work_items, 3);  // the 40-block row was split
  ASSERT_EQ(
      BuildDecodePlan(opt, indptr.data(), last.data(), 3, 16, layer1.data(), fresh.data(), &p1),
      cudaSuccess);
  ASSERT_TRUE(RebaseDecodePlan(p0, meta0.data(), indptr.data(), last.data(), 16, layer1.data(),
                               rebased.data()));
  EXPECT_EQ(rebased, fresh);
  const std::vector<int32_t> other_last{16, 3, 9, 16, 3, 8};  // row 5 one token shorter
  std::vector<int32_t> untouched(DecodeMetaInts(opt), -7);
  EXPECT_FALSE(RebaseDecodePlan(p0, meta0.data(), indptr.data(), other_last.data(), 16,
                                layer1.data(), untouched.data()));
  EXPECT_EQ(untouched, std::vector<int32_t>(DecodeMetaInts(opt), -7));
}

// Host only: HeadKV-like ragged rows (thousands of rows of 70-800 tokens and a few long ones,
// the planner's counting-sort and simulated-makespan paths). The work list's layout is
// kernels/decode_attention.cu's MetaLayout: header (num_work, num_merge), then work_row,
// work_begin, work_end, work_slot, work_first_block (max_work_items each), row_split_begin,
// row_num_splits, merge_row (max_rows each). Every row is covered by its splits, in order and
// without gaps; items run longest first, ties in row order; split rows are the merge rows.
TEST(DecodeAttentionPlanTest, WorkListCoversEveryRowLongestFirst) {
  std::mt19937 rng(11);
  for (int32_t rows : {1, 40, 512, 2048}) {
    SCOPED_TRACE("rows " + std::to_string(rows));
    DecodePlanOptions opt;
    opt.max_rows = rows;
    opt.max_work_items = rows + 1024;
    opt.group_size = 4;
    opt.head_dim = 128;
    opt.num_sms = 132;
    std::vector<int32_t> indptr{0}, last;
    std::vector<int64_t> want_len;
    for (int32_t r = 0; r < rows; ++r) {
      int64_t len = 70 + static_cast<int64_t>(rng() % 731);
      if (r % 97 == 5) len = 4000 + rng() % 9000;
      const int32_t blocks = static_cast<int32_t>((len + 15) / 16);
      indptr.push_back(indptr.back() + blocks);
      last.push_back(static_cast<int32_t>(len - 16 * (blocks - 1)));
      want_len.push_back(len);
    }
    std::vector<int32_t> meta(DecodeMetaInts(opt));
    DecodePlan plan;
    ASSERT_EQ(
        BuildDecodePlan(opt, indptr.data(), last.data(), rows, 16, nullptr, meta.data(), &plan),
        cudaSuccess);
    const int64_t W = opt.max_work_items, R = opt.max_rows;
    const int64_t work_row = 2, work_begin = work_row + W, work_end = work_begin + W,
                  work_slot = work_end + W, work_first = work_slot + W,
                  split_begin = work_first + W, num_splits = split_begin + R,
                  merge_row = num_splits + R;
    const int32_t items = meta[0];
    ASSERT_EQ(items, plan.num_work_items);
    ASSERT_GE(items, rows);
    ASSERT_LE(items, W);
    // Each row's splits, by slot: contiguous from 0 to the row's length.
    std::vector<std::vector<std::pair<int32_t, int32_t>>> by_row(rows);
    std::vector<int32_t> slot_seen(items, 0);
    for (int32_t i = 0; i < items; ++i) {
      const int32_t r = meta[work_row + i], b = meta[work_begin + i], e = meta[work_end + i];
      ASSERT_GE(r, 0);
      ASSERT_LT(r, rows);
      ASSERT_LT(b, e) << "item " << i;
      EXPECT_EQ(meta[work_first + i], indptr[r]);
      const int32_t slot = meta[work_slot + i];
      ASSERT_GE(slot, meta[split_begin + r]);
      ASSERT_LT(slot, meta[split_begin + r] + meta[num_splits + r]);
      ++slot_seen[slot];
      by_row[r].push_back({b, e});
      if (i > 0) {
        const int32_t prev = meta[work_end + i - 1] - meta[work_begin + i - 1];
        ASSERT_GE(prev, e - b) << "items must run longest first (item " << i << ")";
        if (prev == e - b) {
          ASSERT_LE(meta[work_row + i - 1], r) << "ties keep row order (item " << i << ")";
        }
      }
    }
    EXPECT_EQ(slot_seen, std::vector<int32_t>(items, 1));
    int32_t merges = 0;
    for (int32_t r = 0; r < rows; ++r) {
      std::sort(by_row[r].begin(), by_row[r].end());
      ASSERT_EQ(static_cast<int32_t>(by_row[r].size()), meta[num_splits + r]);
      int32_t at = 0;
      for (const auto& [b, e] : by_row[r]) {
        ASSERT_EQ(b, at) << "row " << r;
        at = e;
      }
      EXPECT_EQ(at, want_len[r]) << "row " << r;
      if (meta[num_splits + r] > 1) {
        ASSERT_LT(merges, meta[1]);
        EXPECT_EQ(meta[merge_row + merges], r);
        ++merges;
      }
    }
    EXPECT_EQ(merges, meta[1]);
  }
}

// One batch-wide CSR with rows (seq, layer, kv_head), as in common/batch.h: each layer is
// planned through host_row_ids and reads the shared indices array.
TEST(DecodeAttentionRowIdsTest, PlansEachLayerOfABatchCsr) {
  HKV_REQUIRE_GPU();
  const Case c{DType::kBf16, 128, 4, 16};
  const int32_t seqs = 3, layers = 2, hkv = 2, hq = hkv * c.group, d = c.head_dim;
  std::mt19937 rng(17);
  std::vector<int64_t> lens(seqs * layers * hkv);
  for (size_t r = 0; r < lens.size(); ++r) lens[r] = 1 + (r * 977) % 3000;
  Cache cache(c.block_size, d, hkv);
  cache.Build(lens, c.dtype, rng);
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  DecodePlanOptions opt;
  opt.max_rows = seqs * hkv;
  opt.max_work_items = 512;
  opt.group_size = c.group;
  opt.head_dim = d;
  DeviceArray<char> ws(DecodeWorkspaceBytes(opt));
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
    DecodePlan plan;
    HKV_CUDA_OK(PlanDecodeAttention(opt, cache.indptr.data(), cache.last_len.data(), seqs * hkv,
                                    c.block_size, ws.get(), nullptr, &plan, ids.data()));
    HKV_CUDA_OK(d_out.Fill(0xff));
    HKV_CUDA_OK(RunDecodeAttention(plan, cache.View(), c.dtype, d_q.get(), hq * d, d_out.get(),
                                   hq * d, scale, nullptr));
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
TEST(DecodeAttentionGraphTest, ReplayAfterReplan) {
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
  DecodePlanOptions opt;
  opt.max_rows = rows;
  opt.max_work_items = 1024;
  opt.group_size = c.group;
  opt.head_dim = d;
  opt.fixed_grid = true;
  DeviceArray<char> ws(DecodeWorkspaceBytes(opt));
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
    DecodePlan plan;
    HKV_CUDA_OK(PlanDecodeAttention(opt, indptr.data(), last.data(), rows, c.block_size, ws.get(),
                                    stream, &plan));
    if (round == 0) {
      cudaGraph_t graph;
      HKV_CUDA_OK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal));
      HKV_CUDA_OK(RunDecodeAttention(plan, cache.View(), c.dtype, d_q.get(), hq * d, d_out.get(),
                                     hq * d, scale, stream));
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
