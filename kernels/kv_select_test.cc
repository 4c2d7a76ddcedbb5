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

// Adaptive (AdaKV) selection: the device split equals headkv's AdaKvAllocate on the kernel's
// own pooled scores (exactly: same keys, same ties), each head keeps SelectKept of its cap,
// and the heads' blocks are packed in head order into the layer's reservation.
struct AdaCase {
  DType dtype;
  int32_t n, num_q_heads, num_kv_heads, head_dim, budget;
  float alpha;
  bool short_reservation;  // One block fewer than needed: nothing is written past the end.
};

class KvSelectAdaptiveTest : public ::testing::TestWithParam<AdaCase> {};

TEST_P(KvSelectAdaptiveTest, MatchesAdaKvAllocate) {
  HKV_REQUIRE_GPU();
  const AdaCase c = GetParam();
  const int32_t w = 8, n = c.n, hq = c.num_q_heads, hkv = c.num_kv_heads, d = c.head_dim;
  const int32_t we = std::min(w, n), past = n - we, bs = 16;
  std::mt19937 rng(n * 7 + hkv);
  const auto qw = testing::RandomValues(static_cast<size_t>(we) * hq * d, 3.0f, c.dtype, rng);
  const auto keys = testing::RandomValues(static_cast<size_t>(n) * hkv * d, 1.0f, c.dtype, rng);
  const auto vals = testing::RandomValues(static_cast<size_t>(n) * hkv * d, 1.0f, c.dtype, rng);
  const AdaKvShares shares = AdaKvSplit(c.budget, hkv, past, c.alpha);
  // The scheduler's bound on the layer's blocks; block ids reversed to test the indirection.
  const int32_t bound = static_cast<int32_t>((shares.total + hkv * (we + bs - 1)) / bs);
  const int32_t capacity = c.short_reservation ? bound - 1 : bound;
  std::vector<int32_t> indices;
  for (int32_t i = 0; i < bound; ++i) indices.push_back(bound - 1 - i);
  const int32_t guard = bound;  // indices[capacity..] -> a block that must stay untouched
  for (int32_t i = capacity; i < bound; ++i) indices[i] = guard;
  const size_t pool = static_cast<size_t>(bound + 1) * bs * d;
  DeviceArray<uint16_t> dq(qw.size()), dk(keys.size()), dv(vals.size()), kp(pool), vp(pool);
  DeviceArray<int32_t> didx(indices.size()), caps(hkv), count(hkv),
      kept(static_cast<size_t>(hkv) * n);
  DeviceArray<float> scores(std::max<size_t>(1, static_cast<size_t>(hkv) * past));
  DeviceArray<char> ws(KvSelectWorkspaceBytes(n, w, hq, hkv));
  HKV_CUDA_OK(dq.Upload(testing::ToStorage(qw, c.dtype)));
  HKV_CUDA_OK(dk.Upload(testing::ToStorage(keys, c.dtype)));
  HKV_CUDA_OK(dv.Upload(testing::ToStorage(vals, c.dtype)));
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
  a.dest_indices = didx.get();
  a.k_pool = kp.get();
  a.v_pool = vp.get();
  a.block_stride = static_cast<int64_t>(bs) * d;
  a.block_size = bs;
  a.workspace = ws.get();
  a.kept_count = count.get();
  a.kept_index = kept.get();
  a.scores = past > 0 ? scores.get() : nullptr;
  a.adaptive_total = shares.total;
  a.adaptive_floor = shares.floor_cap;
  a.dest_capacity = capacity;
  a.caps_out = caps.get();
  HKV_CUDA_OK(RunKvSelect(a, nullptr));
  HKV_CUDA_OK(cudaDeviceSynchronize());

  const auto gcaps = caps.Download();
  const auto gcount = count.Download();
  const auto gkept = kept.Download();
  const auto gscores = scores.Download();
  const auto kpool = kp.Download(), vpool = vp.Download();
  const auto kbits = testing::ToStorage(keys, c.dtype), vbits = testing::ToStorage(vals, c.dtype);
  std::vector<std::vector<float>> gs(hkv);
  for (int32_t h = 0; h < hkv; ++h) {
    gs[h].assign(gscores.begin() + static_cast<size_t>(h) * past,
                 gscores.begin() + static_cast<size_t>(h) * past + past);
  }
  const std::vector<int32_t> want_caps = AdaKvAllocate(gs, c.budget, c.alpha);
  ASSERT_EQ(gcaps, want_caps);
  int64_t sum = 0;
  for (int32_t x : gcaps) sum += x;
  EXPECT_EQ(sum, shares.total);
  int32_t offset = 0;  // the head's first block in the reservation
  for (int32_t h = 0; h < hkv; ++h) {
    SCOPED_TRACE("head " + std::to_string(h) + " cap " + std::to_string(gcaps[h]));
    ASSERT_EQ(gcount[h], gcaps[h] + we);
    const std::vector<int32_t> got(gkept.begin() + static_cast<size_t>(h) * n,
                                   gkept.begin() + static_cast<size_t>(h) * n + gcount[h]);
    EXPECT_EQ(got, SelectKept(absl::MakeConstSpan(gs[h]), gcaps[h], n, we));
    for (int32_t i = 0; i < gcount[h]; ++i) {
      const int32_t slot = offset + i / bs;
      if (slot >= capacity) break;
      const int64_t dst =
          static_cast<int64_t>(indices[slot]) * bs * d + static_cast<int64_t>(i % bs) * d;
      const int64_t src = (static_cast<int64_t>(got[i]) * hkv + h) * d;
      for (int32_t x = 0; x < d; ++x) {
        ASSERT_EQ(kpool[dst + x], kbits[src + x]) << "K token " << i;
        ASSERT_EQ(vpool[dst + x], vbits[src + x]) << "V token " << i;
      }
    }
    offset += (gcount[h] + bs - 1) / bs;
  }
  EXPECT_LE(offset, bound);
  for (size_t x = static_cast<size_t>(guard) * bs * d; x < pool; ++x) {
    ASSERT_EQ(kpool[x], 0xffff) << "guard block written";
    ASSERT_EQ(vpool[x], 0xffff) << "guard block written";
  }
}

INSTANTIATE_TEST_SUITE_P(
    All, KvSelectAdaptiveTest,
    ::testing::Values(
        AdaCase{DType::kBf16, 2000, 8, 2, 128, 2 * 120, 0.2f, false},
        AdaCase{DType::kBf16, 4099, 32, 8, 128, 8 * 56, 0.2f, false},
        AdaCase{DType::kFp16, 1500, 12, 6, 64, 6 * 100, 0.0f, false},
        AdaCase{DType::kBf16, 700, 8, 2, 64, 2 * 24, 1.0f, false},   // floors only
        AdaCase{DType::kBf16, 300, 8, 1, 64, 50, 0.2f, false},       // one head
        AdaCase{DType::kBf16, 9, 4, 4, 64, 100, 0.2f, false},        // budget above H * past
        AdaCase{DType::kBf16, 8, 8, 2, 128, 16, 0.2f, false},        // no past: windows only
        AdaCase{DType::kBf16, 1000, 8, 2, 64, 2 * 56, 0.2f, true}),  // reservation too short
    [](const ::testing::TestParamInfo<AdaCase>& i) {
      return std::string(testing::Name(i.param.dtype)) + "_n" + std::to_string(i.param.n) + "_hkv" +
             std::to_string(i.param.num_kv_heads) + "_b" + std::to_string(i.param.budget) + "_a" +
             std::to_string(static_cast<int>(i.param.alpha * 10)) +
             (i.param.short_reservation ? "_short" : "");
    });

// Equal scores everywhere: after the floors, the rest goes to the lowest head first, and
// within a head to the lowest positions (AdaKvAllocate's order).
TEST(KvSelectTieTest, AdaptiveTiesGoToTheLowerHeadThenPosition) {
  HKV_REQUIRE_GPU();
  const int32_t n = 600, w = 8, hq = 4, hkv = 2, d = 64, bs = 16, budget = 100;
  const int32_t past = n - w;
  std::vector<float> qw(static_cast<size_t>(w) * hq * d, 0.5f),
      keys(static_cast<size_t>(n) * hkv * d, 0.25f);
  const AdaKvShares shares = AdaKvSplit(budget, hkv, past, 0.2f);  // floor 10, total 100
  const int32_t blocks = static_cast<int32_t>((shares.total + hkv * (w + bs - 1)) / bs);
  std::vector<int32_t> indices(blocks);
  for (int32_t i = 0; i < blocks; ++i) indices[i] = i;
  DeviceArray<uint16_t> dq(qw.size()), dk(keys.size()), pool(static_cast<size_t>(blocks) * bs * d);
  DeviceArray<int32_t> didx(blocks), caps(hkv), count(hkv), kept(static_cast<size_t>(hkv) * n);
  DeviceArray<char> ws(KvSelectWorkspaceBytes(n, w, hq, hkv));
  HKV_CUDA_OK(dq.Upload(testing::ToStorage(qw, DType::kBf16)));
  HKV_CUDA_OK(dk.Upload(testing::ToStorage(keys, DType::kBf16)));
  HKV_CUDA_OK(didx.Upload(indices));
  KvSelectArgs a;
  a.q_window = dq.get();
  a.keys = a.values = dk.get();
  a.q_stride = hq * d;
  a.kv_stride = hkv * d;
  a.n = n;
  a.window = w;
  a.num_q_heads = hq;
  a.num_kv_heads = hkv;
  a.head_dim = d;
  a.scale = 0.125f;
  a.dest_indices = didx.get();
  a.k_pool = a.v_pool = pool.get();
  a.block_stride = bs * d;
  a.block_size = bs;
  a.workspace = ws.get();
  a.kept_count = count.get();
  a.kept_index = kept.get();
  a.adaptive_total = shares.total;
  a.adaptive_floor = shares.floor_cap;
  a.dest_capacity = blocks;
  a.caps_out = caps.get();
  HKV_CUDA_OK(RunKvSelect(a, nullptr));
  HKV_CUDA_OK(cudaDeviceSynchronize());
  EXPECT_EQ(caps.Download(), (std::vector<int32_t>{90, 10}));
  const auto got = kept.Download();
  for (int32_t i = 0; i < 90; ++i) EXPECT_EQ(got[i], i);
  for (int32_t i = 0; i < 10; ++i) EXPECT_EQ(got[n + i], i);
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
  // Adaptive: caps_out required, the total within H * (n - w), the floors within the total.
  a.block_size = 16;
  a.adaptive_total = 2;
  EXPECT_EQ(RunKvSelect(a, nullptr), cudaErrorInvalidValue);
  a.caps_out = &x;
  a.adaptive_total = 3;  // above 1 head * (10 - 8)
  EXPECT_EQ(RunKvSelect(a, nullptr), cudaErrorInvalidValue);
  a.adaptive_total = 1;
  a.adaptive_floor = 2;
  EXPECT_EQ(RunKvSelect(a, nullptr), cudaErrorInvalidValue);
  // Static again: the window queries and keys are read 16 bytes at a time.
  a.adaptive_total = -1;
  a.adaptive_floor = 0;
  a.q_stride = 12;
  EXPECT_EQ(RunKvSelect(a, nullptr), cudaErrorInvalidValue);
  a.q_stride = 16;
  a.kv_stride = 20;
  EXPECT_EQ(RunKvSelect(a, nullptr), cudaErrorInvalidValue);
}

}  // namespace
}  // namespace hkv::kernels
