// Attention probes (attention_probe.h) vs the CPU reference (ref::AttentionProbe): GQA groups,
// both head dims and dtypes, rows from 1 to 10k tokens in shuffled blocks, several probes per
// launch with their own prompt lengths and top-N, and the 256 cap.

#include "kernels/attention_probe.h"

#include <gtest/gtest.h>

#include <algorithm>
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
  int32_t head_dim, group, block_size;
};

class AttentionProbeTest : public ::testing::TestWithParam<Case> {};

TEST_P(AttentionProbeTest, MatchesReference) {
  HKV_REQUIRE_GPU();
  const Case c = GetParam();
  std::mt19937 rng(11 + c.head_dim + c.group);
  const int32_t num_seqs = 3, hkv = 2, hq = hkv * c.group, d = c.head_dim, bs = c.block_size;
  // Per sequence: its row length (every kv head the same), prompt length, top-N.
  const std::vector<int32_t> lens = {10000, 37, 1}, prompts = {9990, 30, 1}, tops = {40, 256, 1};
  std::vector<int32_t> indptr{0}, indices, last;
  for (int32_t s = 0; s < num_seqs; ++s) {
    for (int32_t h = 0; h < hkv; ++h) {
      const int32_t nb = (lens[s] + bs - 1) / bs;
      for (int32_t b = 0; b < nb; ++b) indices.push_back(static_cast<int32_t>(indices.size()));
      indptr.push_back(static_cast<int32_t>(indices.size()));
      last.push_back(lens[s] - (nb - 1) * bs);
    }
  }
  std::vector<int32_t> perm(indices.size());
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), rng);
  for (int32_t& b : indices) b = perm[b];
  const std::vector<float> k = testing::RandomValues(indices.size() * bs * d, 1.0f, c.dtype, rng);
  // A sharp softmax (large q) so that the top positions stand apart.
  const std::vector<float> q =
      testing::RandomValues(size_t{1} * num_seqs * hq * d, 3.0f, c.dtype, rng);
  DeviceArray<int32_t> d_indptr(indptr.size()), d_indices(indices.size()), d_last(last.size());
  DeviceArray<uint16_t> d_k(k.size()), d_q(q.size());
  HKV_CUDA_OK(d_indptr.Upload(indptr));
  HKV_CUDA_OK(d_indices.Upload(indices));
  HKV_CUDA_OK(d_last.Upload(last));
  HKV_CUDA_OK(d_k.Upload(testing::ToStorage(k, c.dtype)));
  HKV_CUDA_OK(d_q.Upload(testing::ToStorage(q, c.dtype)));
  // Probe sequences 0 and 2 (sequence 1 twice, in another order: probes are independent).
  const std::vector<int32_t> seqs = {2, 0, 1};
  std::vector<int32_t> meta, prompt_len, top_n;
  for (int32_t s : seqs) {
    prompt_len.push_back(prompts[s]);
    top_n.push_back(std::min(tops[s], prompts[s]));
    meta.insert(meta.end(), {s, s, prompt_len.back(), top_n.back()});
  }
  const int32_t n = static_cast<int32_t>(seqs.size()), max_top = 256, max_len = 10000;
  DeviceArray<int32_t> d_meta(meta.size()), d_pos(n * hq * max_top);
  DeviceArray<float> d_w(n * hq * max_top), d_ws(AttentionProbeWorkspaceBytes(n, hq, max_len) / 4);
  HKV_CUDA_OK(d_meta.Upload(meta));
  AttentionProbeArgs a;
  a.dtype = c.dtype;
  a.q = d_q.get();
  a.q_row_stride = static_cast<int64_t>(hq) * d;
  a.kv.indptr = d_indptr.get();
  a.kv.indices = d_indices.get();
  a.kv.last_len = d_last.get();
  a.kv.k_pool = d_k.get();
  a.kv.block_stride = static_cast<int64_t>(bs) * d;
  a.kv.block_size = bs;
  a.kv.num_kv_heads = hkv;
  a.kv.head_dim = d;
  a.meta = d_meta.get();
  a.num_probes = n;
  a.num_q_heads = hq;
  a.max_len = max_len;
  a.max_top_n = max_top;
  a.scale = 1.0f / std::sqrt(static_cast<float>(d));
  a.logits = d_ws.get();
  a.positions = d_pos.get();
  a.weights = d_w.get();
  HKV_CUDA_OK(RunAttentionProbe(a, nullptr));
  HKV_CUDA_OK(cudaDeviceSynchronize());
  const std::vector<int32_t> pos = d_pos.Download();
  const std::vector<float> w = d_w.Download();
  ref::HostPagedKv host;
  host.indptr = indptr.data();
  host.indices = indices.data();
  host.last_len = last.data();
  host.k_pool = k.data();
  host.block_stride = static_cast<int64_t>(bs) * d;
  host.block_size = bs;
  host.num_kv_heads = hkv;
  host.head_dim = d;
  for (int32_t p = 0; p < n; ++p) {
    for (int32_t h = 0; h < hq; ++h) {
      const int32_t s = seqs[p], top = top_n[p];
      std::vector<int32_t> want_pos(top);
      std::vector<float> want_w(top);
      ref::AttentionProbe(&q[(static_cast<size_t>(s) * hq + h) * d], host, s * hkv + h / c.group,
                          prompt_len[p], top, a.scale, want_pos.data(), want_w.data());
      const size_t at = (static_cast<size_t>(p) * hq + h) * max_top;
      for (int32_t i = 0; i < top; ++i) {
        const float tol = 1e-6f + 2e-3f * want_w[i];
        EXPECT_NEAR(w[at + i], want_w[i], tol) << "probe " << p << " head " << h << " rank " << i;
        const bool apart = (i == 0 || want_w[i - 1] - want_w[i] > 2 * tol) &&
                           (i + 1 == top || want_w[i] - want_w[i + 1] > 2 * tol);
        if (apart) EXPECT_EQ(pos[at + i], want_pos[i]) << "probe " << p << " head " << h;
        EXPECT_GE(pos[at + i], 0);
        EXPECT_LT(pos[at + i], prompt_len[p]);
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, AttentionProbeTest,
                         ::testing::Values(Case{DType::kBf16, 64, 4, 16},
                                           Case{DType::kBf16, 128, 8, 16},
                                           Case{DType::kFp16, 128, 1, 32},
                                           Case{DType::kBf16, 64, 2, 64}));

TEST(AttentionProbeArgsTest, BadShapesAreInvalidValue) {
  AttentionProbeArgs a;
  a.num_probes = 1;
  a.max_len = 1;
  a.max_top_n = kMaxProbeTopN + 1;
  EXPECT_EQ(RunAttentionProbe(a, nullptr), cudaErrorInvalidValue);
  a.num_probes = 0;
  EXPECT_EQ(RunAttentionProbe(a, nullptr), cudaSuccess);  // Nothing to do.
}

}  // namespace
}  // namespace hkv::kernels
