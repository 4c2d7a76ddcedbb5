// Causal GQA prefill attention vs the CPU reference, with chunk offsets (paged prefix K/V).

#include "kernels/prefill_attention.h"

#include <gtest/gtest.h>

#include <cmath>
#include <numeric>
#include <random>
#include <vector>

#include "kernels/reference.h"
#include "kernels/test_util.h"

namespace hkv::kernels {
namespace {

using testing::DeviceArray;

struct Case {
  DType dtype;
  int32_t head_dim, group;
  bool with_prefix;
};

class PrefillAttentionTest : public ::testing::TestWithParam<Case> {};

TEST_P(PrefillAttentionTest, MatchesReference) {
  HKV_REQUIRE_GPU();
  const Case c = GetParam();
  std::mt19937 rng(31 + c.group + c.head_dim);
  const int32_t hkv = 2, hq = hkv * c.group, d = c.head_dim, bs = 16;
  const std::vector<int32_t> chunk{1, 63, 130, 64, 257};
  const std::vector<int32_t> prefix_len =
      c.with_prefix ? std::vector<int32_t>{0, 50, 300, 17, 700} : std::vector<int32_t>(5, 0);
  const int32_t seqs = static_cast<int32_t>(chunk.size());
  std::vector<int32_t> cu{0};
  for (int32_t n : chunk) cu.push_back(cu.back() + n);
  const int32_t total = cu.back();
  const auto q = testing::RandomValues(static_cast<size_t>(total) * hq * d, 1.0f, c.dtype, rng);
  const auto k = testing::RandomValues(static_cast<size_t>(total) * hkv * d, 1.0f, c.dtype, rng);
  const auto v = testing::RandomValues(static_cast<size_t>(total) * hkv * d, 1.0f, c.dtype, rng);
  // Prefix pool: rows (seq, kv_head), blocks in reverse order to exercise the indirection.
  std::vector<int32_t> indptr{0}, indices, last;
  int32_t blocks = 0;
  for (int32_t s = 0; s < seqs; ++s) {
    for (int32_t h = 0; h < hkv; ++h) blocks += (prefix_len[s] + bs - 1) / bs;
  }
  int32_t next = blocks;
  for (int32_t s = 0; s < seqs; ++s) {
    for (int32_t h = 0; h < hkv; ++h) {
      const int32_t nb = (prefix_len[s] + bs - 1) / bs;
      for (int32_t b = 0; b < nb; ++b) indices.push_back(--next);
      indptr.push_back(static_cast<int32_t>(indices.size()));
      last.push_back(nb == 0 ? 0 : prefix_len[s] - (nb - 1) * bs);
    }
  }
  // The device CSR interleaves one unrelated row per sequence (as a batch-wide CSR with other
  // layers would): CSR row of (s, h) = s * (hkv + 1) + 1 + h. The reference uses the compact one.
  std::vector<int32_t> dev_indptr{0}, dev_indices, dev_last;
  for (int32_t s = 0; s < seqs; ++s) {
    dev_indices.push_back(blocks);  // the unrelated row: 3 tokens in the spare block
    dev_indptr.push_back(static_cast<int32_t>(dev_indices.size()));
    dev_last.push_back(3);
    for (int32_t h = 0; h < hkv; ++h) {
      const int32_t r = s * hkv + h;
      for (int32_t b = indptr[r]; b < indptr[r + 1]; ++b) dev_indices.push_back(indices[b]);
      dev_indptr.push_back(static_cast<int32_t>(dev_indices.size()));
      dev_last.push_back(last[r]);
    }
  }
  const size_t pool = static_cast<size_t>(blocks + 1) * bs * d;
  const auto kp = testing::RandomValues(pool, 1.0f, c.dtype, rng);
  const auto vp = testing::RandomValues(pool, 1.0f, c.dtype, rng);

  DeviceArray<uint16_t> dq(q.size()), dk(k.size()), dv(v.size()), dout(q.size());
  DeviceArray<uint16_t> dkp(pool), dvp(pool);
  DeviceArray<int32_t> dcu(cu.size()), dind(dev_indptr.size()), didx(dev_indices.size()),
      dlast(dev_last.size());
  HKV_CUDA_OK(dq.Upload(testing::ToStorage(q, c.dtype)));
  HKV_CUDA_OK(dk.Upload(testing::ToStorage(k, c.dtype)));
  HKV_CUDA_OK(dv.Upload(testing::ToStorage(v, c.dtype)));
  HKV_CUDA_OK(dkp.Upload(testing::ToStorage(kp, c.dtype)));
  HKV_CUDA_OK(dvp.Upload(testing::ToStorage(vp, c.dtype)));
  HKV_CUDA_OK(dcu.Upload(cu));
  HKV_CUDA_OK(dind.Upload(dev_indptr));
  HKV_CUDA_OK(didx.Upload(dev_indices));
  HKV_CUDA_OK(dlast.Upload(dev_last));
  HKV_CUDA_OK(dout.Fill(0xff));
  PagedKvView view{dind.get(), didx.get(), dlast.get(),
                   dkp.get(),  dvp.get(),  static_cast<int64_t>(bs) * d,
                   bs,         hkv,        d};
  view.row_seq_stride = hkv + 1;
  view.row_offset = 1;
  PrefillAttentionArgs a;
  a.dtype = c.dtype;
  a.q = dq.get();
  a.k = dk.get();
  a.v = dv.get();
  a.out = dout.get();
  a.q_stride = a.out_stride = static_cast<int64_t>(hq) * d;
  a.kv_stride = static_cast<int64_t>(hkv) * d;
  a.cu_seqlens = dcu.get();
  a.num_seqs = seqs;
  a.max_q_len = *std::max_element(chunk.begin(), chunk.end());
  a.num_q_heads = hq;
  a.num_kv_heads = hkv;
  a.head_dim = d;
  a.scale = 1.0f / std::sqrt(static_cast<float>(d));
  a.prefix = c.with_prefix ? &view : nullptr;
  HKV_CUDA_OK(RunPrefillAttention(a, nullptr));
  HKV_CUDA_OK(cudaDeviceSynchronize());
  const auto got = testing::FromStorage(dout.Download(), c.dtype);
  const ref::HostPagedKv host{indptr.data(),
                              indices.data(),
                              last.data(),
                              kp.data(),
                              vp.data(),
                              static_cast<int64_t>(bs) * d,
                              bs,
                              hkv,
                              d};
  for (int32_t s = 0; s < seqs; ++s) {
    const size_t qo = static_cast<size_t>(cu[s]) * hq * d,
                 ko = static_cast<size_t>(cu[s]) * hkv * d;
    std::vector<float> expect(static_cast<size_t>(chunk[s]) * hq * d);
    ref::PrefillAttention(q.data() + qo, k.data() + ko, v.data() + ko, chunk[s], hq, hkv, d,
                          c.with_prefix ? &host : nullptr, s, a.scale, expect.data());
    const std::vector<float> g(got.begin() + qo, got.begin() + qo + expect.size());
    EXPECT_LT(testing::RelError(g, expect), testing::Tolerance(c.dtype))
        << "seq " << s << " chunk " << chunk[s] << " prefix " << prefix_len[s];
  }
}

INSTANTIATE_TEST_SUITE_P(
    All, PrefillAttentionTest,
    ::testing::Values(Case{DType::kBf16, 128, 4, false}, Case{DType::kBf16, 128, 4, true},
                      Case{DType::kFp16, 128, 1, true}, Case{DType::kBf16, 64, 8, true},
                      Case{DType::kFp16, 64, 2, false}),
    [](const ::testing::TestParamInfo<Case>& i) {
      return std::string(testing::Name(i.param.dtype)) + "_d" + std::to_string(i.param.head_dim) +
             "_g" + std::to_string(i.param.group) + (i.param.with_prefix ? "_prefix" : "_noprefix");
    });

TEST(PrefillAttentionArgsTest, RejectsBadShapes) {
  PrefillAttentionArgs a;
  a.num_q_heads = 6;
  a.num_kv_heads = 4;
  a.head_dim = 128;
  int32_t dummy = 0;
  a.cu_seqlens = &dummy;
  EXPECT_EQ(RunPrefillAttention(a, nullptr), cudaErrorInvalidValue);
  a.num_q_heads = 8;
  a.head_dim = 96;
  EXPECT_EQ(RunPrefillAttention(a, nullptr), cudaErrorInvalidValue);
}

}  // namespace
}  // namespace hkv::kernels
