#pragma once
// Helpers of the decode attention tests: a random paged cache with given row lengths, and one
// call of the kernel (host or device plan, any tuning) checked against the CPU reference.
// Test-only; not thread-safe.

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <vector>

#include "kernels/reference.h"
#include "kernels/single_launch_decode_attention.h"
#include "kernels/test_util.h"

namespace hkv::kernels::testing {

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
    k = RandomValues(n, 1.0f, dtype, rng);
    v = RandomValues(n, 1.0f, dtype, rng);
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
    d_k.Upload(ToStorage(k, dtype));
    d_v.Resize(v.size());
    d_v.Upload(ToStorage(v, dtype));
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
};

// How CheckDecode plans and runs: tuning options on top of the defaults, which planner, and
// how many times the same plan runs (every run is checked: the arrival counters must reset).
struct DecodeSetup {
  SingleLaunchDecodeOptions tune;  // cta_threads .. ctas_per_sm, max_work_items (0 = 4096)
  bool device_plan = false;
  int32_t repeats = 1;
  bool expect_split = false;  // some row must be split over several items (host plan)
};

// Plans and runs decode attention over rows of `lens` and compares every head with the
// reference; returns the output bits of the last run.
inline std::vector<uint16_t> CheckDecode(const Case& c, const std::vector<int64_t>& lens,
                                         int32_t num_kv_heads, std::mt19937& rng,
                                         const DecodeSetup& setup) {
  const int32_t num_rows = static_cast<int32_t>(lens.size());
  const int32_t num_seqs = num_rows / num_kv_heads;
  const int32_t hq = num_kv_heads * c.group, d = c.head_dim;
  Cache cache(c.block_size, d, num_kv_heads);
  cache.Build(lens, c.dtype, rng);
  const std::vector<float> q =
      RandomValues(static_cast<size_t>(num_seqs) * hq * d, 1.0f, c.dtype, rng);
  DeviceArray<uint16_t> d_q(q.size()), d_out(q.size());
  EXPECT_EQ(d_q.Upload(ToStorage(q, c.dtype)), cudaSuccess);

  SingleLaunchDecodeOptions opt = setup.tune;
  opt.max_rows = num_rows;
  if (opt.max_work_items == 0) opt.max_work_items = 4096;
  opt.group_size = c.group;
  opt.head_dim = d;
  DeviceArray<char> ws(SingleLaunchDecodeWorkspaceBytes(opt));
  SingleLaunchDecodePlan plan;
  cudaError_t e =
      setup.device_plan
          ? PlanSingleLaunchDecodeAttentionOnDevice(opt, cache.d_indptr.get(),
                                                    cache.d_last_len.get(), num_rows, c.block_size,
                                                    ws.get(), nullptr, &plan)
          : PlanSingleLaunchDecodeAttention(opt, cache.indptr.data(), cache.last_len.data(),
                                            num_rows, c.block_size, ws.get(), nullptr, &plan);
  EXPECT_EQ(e, cudaSuccess) << cudaGetErrorString(e);
  if (e != cudaSuccess) return {};
  if (setup.expect_split) EXPECT_GT(plan.num_merge_rows, 0);
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  std::vector<float> expect(q.size());
  ref::DecodeAttention(q.data(), cache.Host(), num_seqs, hq, scale, expect.data());
  std::vector<uint16_t> bits;
  for (int32_t rep = 0; rep < setup.repeats; ++rep) {
    EXPECT_EQ(d_out.Fill(0xff), cudaSuccess);  // NaN poison: every element must be written
    e = RunSingleLaunchDecodeAttention(plan, cache.View(), c.dtype, d_q.get(),
                                       static_cast<int64_t>(hq) * d, d_out.get(),
                                       static_cast<int64_t>(hq) * d, scale, nullptr);
    EXPECT_EQ(e, cudaSuccess) << cudaGetErrorString(e);
    EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    bits = d_out.Download();
    const std::vector<float> got = FromStorage(bits, c.dtype);
    EXPECT_LT(RelError(got, expect), Tolerance(c.dtype)) << "run " << rep;
    // Per head too, so a short row hidden by long ones still counts.
    for (int32_t s = 0; s < num_seqs; ++s) {
      for (int32_t h = 0; h < hq; ++h) {
        const size_t off = (static_cast<size_t>(s) * hq + h) * d;
        std::vector<float> g(got.begin() + off, got.begin() + off + d);
        std::vector<float> x(expect.begin() + off, expect.begin() + off + d);
        const int64_t len = lens[s * num_kv_heads + h / c.group];
        if (len == 0) {
          for (float y : g) EXPECT_EQ(y, 0.0f) << "empty row must give zeros";
        } else {
          EXPECT_LT(RelError(g, x), 2 * Tolerance(c.dtype))
              << "run " << rep << " seq " << s << " head " << h << " len " << len;
        }
        if (::testing::Test::HasFailure()) return bits;
      }
    }
  }
  return bits;
}

}  // namespace hkv::kernels::testing
