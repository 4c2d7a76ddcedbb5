// RopeKvAppend against the unfused kernels it replaces (Rope, then AppendKvSlots: equal bits)
// and against ref::Rope, both pairings, with a token that is rotated but not written and a
// skipped slot. Skips without a GPU.

#include "kernels/rope_kv_append.h"

#include <random>
#include <vector>

#include "kernels/kv_append.h"
#include "kernels/test_util.h"

namespace hkv::kernels {
namespace {

using testing::DeviceArray;

class RopeKvAppendTest : public ::testing::TestWithParam<DType> {};

TEST_P(RopeKvAppendTest, MatchesRopeThenAppend) {
  HKV_REQUIRE_GPU();
  const DType t = GetParam();
  struct Shape {
    int32_t hq, hk, d;
  };
  // One block of heads; k heads split over two blocks (16 heads of 128 a block); 64-dim heads;
  // a head_dim the vector kernel cannot take (40).
  for (const Shape& sh : {Shape{4, 2, 128}, Shape{12, 8, 128}, Shape{32, 8, 64}, Shape{4, 2, 40}}) {
    SCOPED_TRACE(::testing::Message() << "hq=" << sh.hq << " hk=" << sh.hk << " d=" << sh.d);
    const int32_t hq = sh.hq, hk = sh.hk, d = sh.d, bs = 16, tokens = 3, append = 2, blocks = 8;
    const int64_t stride = (hq + 2 * hk) * d;
    std::mt19937 rng(3);
    const auto qkv = testing::RandomValues(tokens * stride, 1.0f, t, rng);
    std::vector<int32_t> pos{0, 17, 1000};
    std::vector<int64_t> slots;  // [append, hk]: distinct slots, some skipped
    for (int32_t i = 0; i < append * hk; ++i)
      slots.push_back(i % 3 == 1 ? -1 : (i * 7) % (blocks * bs));
    DeviceArray<int32_t> dpos(pos.size());
    DeviceArray<int64_t> dslots(slots.size());
    HKV_CUDA_OK(dpos.Upload(pos));
    HKV_CUDA_OK(dslots.Upload(slots));
    for (RopeStyle style : {RopeStyle::kRotateHalf, RopeStyle::kInterleaved}) {
      DeviceArray<uint16_t> fused_qkv(qkv.size()), plain_qkv(qkv.size());
      HKV_CUDA_OK(fused_qkv.Upload(testing::ToStorage(qkv, t)));
      HKV_CUDA_OK(plain_qkv.Upload(testing::ToStorage(qkv, t)));
      DeviceArray<uint16_t> kp1(blocks * bs * d), vp1(blocks * bs * d), kp2(kp1.size()),
          vp2(kp1.size());
      for (auto* p : {&kp1, &vp1, &kp2, &vp2}) HKV_CUDA_OK(p->Fill(0));
      PagedKvView view;
      view.block_stride = bs * d;
      view.block_size = bs;
      view.num_kv_heads = hk;
      view.head_dim = d;
      view.k_pool = kp1.get();
      view.v_pool = vp1.get();
      RopeKvAppendArgs a;
      a.dtype = t;
      a.qkv = fused_qkv.get();
      a.stride = stride;
      a.k_offset = hq * d;
      a.v_offset = (hq + hk) * d;
      a.num_q_heads = hq;
      a.pos = dpos.get();
      a.tokens = tokens;
      a.theta = 500000.0f;
      a.style = style;
      a.slots = dslots.get();
      a.append_tokens = append;
      HKV_CUDA_OK(RopeKvAppend(a, view, nullptr));
      uint16_t* pq = plain_qkv.get();
      HKV_CUDA_OK(Rope(t, pq, stride, hq, pq + hq * d, stride, hk, dpos.get(), tokens, d, a.theta,
                       nullptr, style, nullptr));
      PagedKvView view2 = view;
      view2.k_pool = kp2.get();
      view2.v_pool = vp2.get();
      HKV_CUDA_OK(AppendKvSlots(t, view2, pq + hq * d, pq + (hq + hk) * d, stride, dslots.get(),
                                append, nullptr));
      HKV_CUDA_OK(cudaDeviceSynchronize());
      EXPECT_EQ(fused_qkv.Download(), plain_qkv.Download());
      EXPECT_EQ(kp1.Download(), kp2.Download());
      EXPECT_EQ(vp1.Download(), vp2.Download());
      // And the CPU reference of the rotation.
      std::vector<float> q(tokens * hq * d), k(tokens * hk * d);
      for (int32_t i = 0; i < tokens; ++i) {
        for (int32_t x = 0; x < hq * d; ++x) q[i * hq * d + x] = qkv[i * stride + x];
        for (int32_t x = 0; x < hk * d; ++x) k[i * hk * d + x] = qkv[i * stride + hq * d + x];
      }
      const bool il = style == RopeStyle::kInterleaved;
      ref::Rope(q.data(), tokens, hq, d, pos.data(), a.theta, nullptr, il);
      ref::Rope(k.data(), tokens, hk, d, pos.data(), a.theta, nullptr, il);
      const auto got = testing::FromStorage(fused_qkv.Download(), t);
      std::vector<float> got_q(q.size()), got_k(k.size());
      for (int32_t i = 0; i < tokens; ++i) {
        for (int32_t x = 0; x < hq * d; ++x) got_q[i * hq * d + x] = got[i * stride + x];
        for (int32_t x = 0; x < hk * d; ++x) got_k[i * hk * d + x] = got[i * stride + hq * d + x];
      }
      EXPECT_LT(testing::RelError(got_q, q), testing::Tolerance(t));
      EXPECT_LT(testing::RelError(got_k, k), testing::Tolerance(t));
      // Written slots hold the rotated k and the unrotated v.
      const auto kh = testing::FromStorage(kp1.Download(), t);
      const auto vh = testing::FromStorage(vp1.Download(), t);
      for (int32_t i = 0; i < append * hk; ++i) {
        if (slots[i] < 0) continue;
        const int32_t tok = i / hk, h = i % hk;
        for (int32_t x = 0; x < d; ++x) {
          ASSERT_EQ(kh[slots[i] * d + x], got[tok * stride + (hq + h) * d + x]) << i;
          ASSERT_EQ(vh[slots[i] * d + x], qkv[tok * stride + (hq + hk + h) * d + x]) << i;
        }
      }
    }
  }
}

TEST_P(RopeKvAppendTest, RefusesBadArguments) {
  HKV_REQUIRE_GPU();
  RopeKvAppendArgs a;
  a.dtype = GetParam();
  a.tokens = 1;
  a.append_tokens = 2;  // more than rotated
  PagedKvView view;
  view.head_dim = 128;
  view.block_size = 16;
  view.block_stride = 16 * 128;
  view.num_kv_heads = 1;
  EXPECT_EQ(RopeKvAppend(a, view, nullptr), cudaErrorInvalidValue);
}

INSTANTIATE_TEST_SUITE_P(Dtypes, RopeKvAppendTest, ::testing::Values(DType::kBf16, DType::kFp16),
                         [](const auto& info) { return testing::Name(info.param); });

}  // namespace
}  // namespace hkv::kernels
