// Fused selection vs headkv's CPU selection (WindowScores + SelectKept): scores, index sets
// (ties -> lower position), per-head caps and the scatter into the head's blocks.

#include "kernels/kv_select.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <set>
#include <vector>

#include "absl/types/span.h"
#include "headkv/selection.h"
#include "kernels/test_util.h"

namespace hkv::kernels {
namespace {

using testing::DeviceArray;

struct Case {
  DType dtype;
  int32_t n, num_q_heads, num_kv_heads, head_dim;
};

class KvSelectTest : public ::testing::TestWithParam<Case> {};

TEST_P(KvSelectTest, MatchesHeadkvSelection) {
  HKV_REQUIRE_GPU();
  const Case c = GetParam();
  const int32_t w = 8, n = c.n, hq = c.num_q_heads, hkv = c.num_kv_heads, d = c.head_dim;
  const int32_t we = std::min(w, n), past = n - we, bs = 16;
  std::mt19937 rng(n * 13 + hq);
  const auto qw = testing::RandomValues(static_cast<size_t>(we) * hq * d, 3.0f, c.dtype, rng);
  const auto keys = testing::RandomValues(static_cast<size_t>(n) * hkv * d, 1.0f, c.dtype, rng);
  const auto vals = testing::RandomValues(static_cast<size_t>(n) * hkv * d, 1.0f, c.dtype, rng);
  // Caps: 0, 1, random, past, more than past, cycling over heads.
  std::vector<int32_t> caps(hkv);
  for (int32_t h = 0; h < hkv; ++h) {
    const int32_t options[] = {std::max(1, past / 3), 0, 1, past, past + 5, past / 2 + 1};
    caps[h] = options[h % 6];
  }
  // Destination rows start at row 1; each head gets ceil(kept / bs) blocks.
  std::vector<int32_t> indptr{0, 0}, indices;
  int32_t next = 0;
  for (int32_t h = 0; h < hkv; ++h) {
    const int32_t kept = std::clamp(caps[h], 0, past) + we;
    for (int32_t b = 0; b < (kept + bs - 1) / bs; ++b) indices.push_back(next++);
    indptr.push_back(static_cast<int32_t>(indices.size()));
  }
  const size_t pool = static_cast<size_t>(next) * bs * d;
  DeviceArray<uint16_t> dq(qw.size()), dk(keys.size()), dv(vals.size()), kp(pool), vp(pool);
  DeviceArray<int32_t> dcaps(hkv), dind(indptr.size()), didx(indices.size()), count(hkv),
      kept(static_cast<size_t>(hkv) * n);
  DeviceArray<float> scores(std::max<size_t>(1, static_cast<size_t>(hkv) * past));
  DeviceArray<char> ws(KvSelectWorkspaceBytes(n, w, hq, hkv));
  HKV_CUDA_OK(dq.Upload(testing::ToStorage(qw, c.dtype)));
  HKV_CUDA_OK(dk.Upload(testing::ToStorage(keys, c.dtype)));
  HKV_CUDA_OK(dv.Upload(testing::ToStorage(vals, c.dtype)));
  HKV_CUDA_OK(dcaps.Upload(caps));
  HKV_CUDA_OK(dind.Upload(indptr));
  HKV_CUDA_OK(didx.Upload(indices));
  HKV_CUDA_OK(kp.Fill(0xff));
  HKV_CUDA_OK(vp.Fill(0xff));
  KvSelectArgs a;
  a.dtype = c.dtype;
  a.q_window = dq.get();
  a.keys = dk.get();
  a.values = dv.get();
  a.q_stride = static_cast<int64_t>(hq) * d;
  a.kv_stride = static_cast<int64_t>(hkv) * d;
  a.n = n;
  a.window = w;
  a.num_q_heads = hq;
  a.num_kv_heads = hkv;
  a.head_dim = d;
  a.scale = 1.0f / std::sqrt(static_cast<float>(d));
  a.caps = dcaps.get();
  a.dest_indptr = dind.get();
  a.dest_indices = didx.get();
  a.dest_first_row = 1;
  a.k_pool = kp.get();
  a.v_pool = vp.get();
  a.block_stride = static_cast<int64_t>(bs) * d;
  a.block_size = bs;
  a.workspace = ws.get();
  a.kept_count = count.get();
  a.kept_index = kept.get();
  a.scores = scores.get();
  HKV_CUDA_OK(RunKvSelect(a, nullptr));
  HKV_CUDA_OK(cudaDeviceSynchronize());

  const auto gcount = count.Download();
  const auto gkept = kept.Download();
  const auto gscores = scores.Download();
  const auto kpool = kp.Download(), vpool = vp.Download();
  const auto kbits = testing::ToStorage(keys, c.dtype), vbits = testing::ToStorage(vals, c.dtype);
  std::vector<std::vector<float>> cpu;
  if (past > 0) cpu = WindowScores(qw.data(), keys.data(), n, we, hq, hkv, d, 7, true);
  for (int32_t h = 0; h < hkv; ++h) {
    SCOPED_TRACE("head " + std::to_string(h) + " cap " + std::to_string(caps[h]));
    ASSERT_EQ(gcount[h], std::clamp(caps[h], 0, past) + we);
    const std::vector<int32_t> got(gkept.begin() + static_cast<size_t>(h) * n,
                                   gkept.begin() + static_cast<size_t>(h) * n + gcount[h]);
    std::vector<float> gs(gscores.begin() + static_cast<size_t>(h) * past,
                          gscores.begin() + static_cast<size_t>(h) * past + past);
    if (past == 0) {
      std::vector<int32_t> all(n);
      for (int32_t i = 0; i < n; ++i) all[i] = i;
      EXPECT_EQ(got, all);
    } else {
      const std::vector<float>& cs = cpu[h];
      const float smax = *std::max_element(cs.begin(), cs.end());
      for (int32_t j = 0; j < past; ++j) ASSERT_NEAR(gs[j], cs[j], 1e-4f * smax) << "pos " << j;
      // Exact: the GPU's selection equals headkv's selection on the GPU's own scores.
      EXPECT_EQ(got, SelectKept(absl::MakeConstSpan(gs), caps[h], n, we));
      // Against the CPU scores: any difference must be a near-tie at the boundary.
      const std::vector<int32_t> want = SelectKept(absl::MakeConstSpan(cs), caps[h], n, we);
      if (got != want) {
        std::vector<float> sorted(cs);
        std::sort(sorted.begin(), sorted.end(), std::greater<float>());
        const int32_t cap = std::clamp(caps[h], 1, past);
        const float boundary = sorted[cap - 1];
        std::set<int32_t> g(got.begin(), got.end()), e(want.begin(), want.end());
        for (int32_t j : g) {
          if (!e.count(j)) EXPECT_NEAR(cs[j], boundary, 1e-4f * smax) << "extra pos " << j;
        }
        for (int32_t j : e) {
          if (!g.count(j)) EXPECT_NEAR(cs[j], boundary, 1e-4f * smax) << "missing pos " << j;
        }
      }
    }
    // Scatter: kept token i of head h sits in block indices[indptr[1 + h] + i / bs].
    for (int32_t i = 0; i < gcount[h]; ++i) {
      const int64_t dst = static_cast<int64_t>(indices[indptr[1 + h] + i / bs]) * bs * d +
                          static_cast<int64_t>(i % bs) * d;
      const int64_t src = (static_cast<int64_t>(got[i]) * hkv + h) * d;
      for (int32_t x = 0; x < d; ++x) {
        ASSERT_EQ(kpool[dst + x], kbits[src + x]) << "K token " << i;
        ASSERT_EQ(vpool[dst + x], vbits[src + x]) << "V token " << i;
      }
    }
  }
}

// In place (chunked prefill's last chunk): the same keys and values, held in paged rows whose
// blocks are out of order, give the dense selection's kept sets and counts exactly, and each
// row ends with its kept tokens compacted into its first slots.
TEST_P(KvSelectTest, InPlaceEqualsDense) {
  HKV_REQUIRE_GPU();
  const Case c = GetParam();
  const int32_t w = 8, n = c.n, hq = c.num_q_heads, hkv = c.num_kv_heads, d = c.head_dim;
  const int32_t we = std::min(w, n), past = n - we, bs = 16, nb = (n + bs - 1) / bs;
  std::mt19937 rng(n * 7 + hkv);
  const auto qw = testing::RandomValues(static_cast<size_t>(we) * hq * d, 3.0f, c.dtype, rng);
  const auto keys = testing::RandomValues(static_cast<size_t>(n) * hkv * d, 1.0f, c.dtype, rng);
  const auto vals = testing::RandomValues(static_cast<size_t>(n) * hkv * d, 1.0f, c.dtype, rng);
  std::vector<int32_t> caps(hkv);
  for (int32_t h = 0; h < hkv; ++h) {
    const int32_t options[] = {std::max(1, past / 3), 0, past, 1, past + 5, past / 2 + 1};
    caps[h] = options[h % 6];
  }
  // Row 1 + h holds head h's n tokens in nb blocks, shuffled over the pool.
  std::vector<int32_t> ids(static_cast<size_t>(hkv) * nb);
  for (size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<int32_t>(i);
  std::shuffle(ids.begin(), ids.end(), rng);
  std::vector<int32_t> indptr{0, 0};
  for (int32_t h = 0; h < hkv; ++h) indptr.push_back(indptr.back() + nb);
  const size_t pool = ids.size() * bs * d;
  const auto kbits = testing::ToStorage(keys, c.dtype), vbits = testing::ToStorage(vals, c.dtype);
  std::vector<uint16_t> kpool(pool, 0xffff), vpool(pool, 0xffff);
  auto slot = [&](int32_t h, int32_t j) {
    return static_cast<int64_t>(ids[h * nb + j / bs]) * bs * d + static_cast<int64_t>(j % bs) * d;
  };
  for (int32_t h = 0; h < hkv; ++h) {
    for (int32_t j = 0; j < n; ++j) {
      for (int32_t x = 0; x < d; ++x) {
        kpool[slot(h, j) + x] = kbits[(static_cast<size_t>(j) * hkv + h) * d + x];
        vpool[slot(h, j) + x] = vbits[(static_cast<size_t>(j) * hkv + h) * d + x];
      }
    }
  }
  DeviceArray<uint16_t> dq(qw.size()), dk(keys.size()), dv(vals.size()), kp(pool), vp(pool),
      kd(pool), vd(pool);
  DeviceArray<int32_t> dcaps(hkv), dind(indptr.size()), didx(ids.size()), count(hkv),
      kept(static_cast<size_t>(hkv) * n), count2(hkv), kept2(static_cast<size_t>(hkv) * n);
  DeviceArray<char> ws(KvSelectWorkspaceBytes(n, w, hq, hkv));
  HKV_CUDA_OK(dq.Upload(testing::ToStorage(qw, c.dtype)));
  HKV_CUDA_OK(dk.Upload(kbits));
  HKV_CUDA_OK(dv.Upload(vbits));
  HKV_CUDA_OK(kp.Upload(kpool));
  HKV_CUDA_OK(vp.Upload(vpool));
  HKV_CUDA_OK(dcaps.Upload(caps));
  HKV_CUDA_OK(dind.Upload(indptr));
  HKV_CUDA_OK(didx.Upload(ids));
  KvSelectArgs a;
  a.dtype = c.dtype;
  a.q_window = dq.get();
  a.keys = dk.get();
  a.values = dv.get();
  a.q_stride = static_cast<int64_t>(hq) * d;
  a.kv_stride = static_cast<int64_t>(hkv) * d;
  a.n = n;
  a.window = w;
  a.num_q_heads = hq;
  a.num_kv_heads = hkv;
  a.head_dim = d;
  a.scale = 1.0f / std::sqrt(static_cast<float>(d));
  a.caps = dcaps.get();
  a.dest_indptr = dind.get();
  a.dest_indices = didx.get();
  a.dest_first_row = 1;
  a.block_stride = static_cast<int64_t>(bs) * d;
  a.block_size = bs;
  a.workspace = ws.get();
  // Dense reference: scattered into a scratch pool kd/vd over the same rows.
  a.k_pool = kd.get();
  a.v_pool = vd.get();
  a.kept_count = count.get();
  a.kept_index = kept.get();
  HKV_CUDA_OK(RunKvSelect(a, nullptr));
  a.in_place = true;
  a.keys = a.values = nullptr;
  a.k_pool = kp.get();
  a.v_pool = vp.get();
  a.kept_count = count2.get();
  a.kept_index = kept2.get();
  HKV_CUDA_OK(RunKvSelect(a, nullptr));
  HKV_CUDA_OK(cudaDeviceSynchronize());
  const auto c1 = count.Download(), c2 = count2.Download();
  const auto k1 = kept.Download(), k2 = kept2.Download();
  const auto kgot = kp.Download(), vgot = vp.Download();
  for (int32_t h = 0; h < hkv; ++h) {
    SCOPED_TRACE("head " + std::to_string(h) + " cap " + std::to_string(caps[h]));
    ASSERT_EQ(c2[h], c1[h]);
    ASSERT_EQ(c2[h], std::clamp(caps[h], 0, past) + we);
    const size_t at = static_cast<size_t>(h) * n;
    ASSERT_TRUE(std::equal(k1.begin() + at, k1.begin() + at + c1[h], k2.begin() + at));
    for (int32_t i = 0; i < c2[h]; ++i) {
      const size_t src = (static_cast<size_t>(k2[at + i]) * hkv + h) * d;
      for (int32_t x = 0; x < d; ++x) {
        ASSERT_EQ(kgot[slot(h, i) + x], kbits[src + x]) << "K token " << i;
        ASSERT_EQ(vgot[slot(h, i) + x], vbits[src + x]) << "V token " << i;
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    All, KvSelectTest,
    ::testing::Values(Case{DType::kBf16, 2000, 8, 2, 128}, Case{DType::kBf16, 8, 8, 2, 128},
                      Case{DType::kBf16, 9, 4, 4, 64}, Case{DType::kFp16, 300, 8, 1, 128},
                      Case{DType::kBf16, 4099, 32, 8, 128}, Case{DType::kFp16, 1500, 12, 6, 64}),
    [](const ::testing::TestParamInfo<Case>& i) {
      return std::string(testing::Name(i.param.dtype)) + "_n" + std::to_string(i.param.n) + "_hq" +
             std::to_string(i.param.num_q_heads) + "_hkv" + std::to_string(i.param.num_kv_heads) +
             "_d" + std::to_string(i.param.head_dim);
    });

// Pooling plateaus create exact ties: equal scores must resolve to the lower positions.
TEST(KvSelectTieTest, ConstantKeysKeepLowestPositions) {
  HKV_REQUIRE_GPU();
  const int32_t n = 600, w = 8, hq = 4, hkv = 1, d = 64, bs = 16, cap = 37;
  std::vector<float> qw(static_cast<size_t>(w) * hq * d, 0.5f),
      keys(static_cast<size_t>(n) * d, 0.25f);
  DeviceArray<uint16_t> dq(qw.size()), dk(keys.size()), pool(static_cast<size_t>(4) * bs * d);
  DeviceArray<int32_t> dcap(1), dind(2), didx(3), count(1), kept(n);
  DeviceArray<char> ws(KvSelectWorkspaceBytes(n, w, hq, hkv));
  HKV_CUDA_OK(dq.Upload(testing::ToStorage(qw, DType::kBf16)));
  HKV_CUDA_OK(dk.Upload(testing::ToStorage(keys, DType::kBf16)));
  HKV_CUDA_OK(dcap.Upload({cap}));
  HKV_CUDA_OK(dind.Upload({0, 3}));
  HKV_CUDA_OK(didx.Upload({2, 0, 1}));
  KvSelectArgs a;
  a.q_window = dq.get();
  a.keys = a.values = dk.get();
  a.q_stride = hq * d;
  a.kv_stride = d;
  a.n = n;
  a.window = w;
  a.num_q_heads = hq;
  a.num_kv_heads = hkv;
  a.head_dim = d;
  a.scale = 0.125f;
  a.caps = dcap.get();
  a.dest_indptr = dind.get();
  a.dest_indices = didx.get();
  a.k_pool = a.v_pool = pool.get();
  a.block_stride = bs * d;
  a.block_size = bs;
  a.workspace = ws.get();
  a.kept_count = count.get();
  a.kept_index = kept.get();
  HKV_CUDA_OK(RunKvSelect(a, nullptr));
  HKV_CUDA_OK(cudaDeviceSynchronize());
  ASSERT_EQ(count.Download()[0], cap + w);
  const auto got = kept.Download();
  for (int32_t i = 0; i < cap; ++i) EXPECT_EQ(got[i], i);
  for (int32_t i = 0; i < w; ++i) EXPECT_EQ(got[cap + i], n - w + i);
}

TEST(KvSelectArgsTest, RejectsBadShapes) {
  KvSelectArgs a;
  a.n = 10;
  a.num_q_heads = 64;
  a.num_kv_heads = 1;  // window * group = 512 > 64
  a.head_dim = 128;
  a.block_size = 16;
  int32_t x = 0;
  a.caps = a.kept_count = a.kept_index = &x;
  a.workspace = &x;
  EXPECT_EQ(RunKvSelect(a, nullptr), cudaErrorInvalidValue);
  a.num_q_heads = 4;
  a.block_size = 12;
  EXPECT_EQ(RunKvSelect(a, nullptr), cudaErrorInvalidValue);
}

}  // namespace
}  // namespace hkv::kernels
