// GatherPageTable on the GPU against the CPU reference: random segment lists mixing copies from
// the last table and from the upload, segments of 0 to kMaxGatherSegment entries, with and
// without the second output; and bad arguments.

#include "kernels/page_table_gather.h"

#include <algorithm>
#include <random>
#include <vector>

#include "kernels/reference.h"
#include "kernels/test_util.h"

namespace hkv::kernels {
namespace {

using testing::DeviceArray;

TEST(PageTableGatherTest, MatchesTheReferenceOnRandomSegmentLists) {
  HKV_REQUIRE_GPU();
  std::mt19937 rng(7);
  for (int trial = 0; trial < 20; ++trial) {
    const int32_t prev_n = 1 + static_cast<int32_t>(rng() % 50000);
    const int32_t upload_n = 1 + static_cast<int32_t>(rng() % 20000);
    std::vector<int32_t> prev(prev_n), upload(upload_n), segments;
    for (int32_t& v : prev) v = static_cast<int32_t>(rng() % 1000000);
    for (int32_t& v : upload) v = static_cast<int32_t>(rng() % 1000000);
    int32_t out_n = 0;
    const int32_t num_segments = static_cast<int32_t>(rng() % 300);
    for (int32_t s = 0; s < num_segments; ++s) {
      const bool from_upload = rng() % 2 == 0;
      const int32_t limit = from_upload ? upload_n : prev_n;
      const int32_t cap = rng() % 10 == 0 ? kMaxGatherSegment : 64;
      const int32_t count = static_cast<int32_t>(rng() % (std::min(cap, limit) + 1));
      const int32_t src = static_cast<int32_t>(rng() % (limit - count + 1));
      segments.insert(segments.end(), {out_n, src, count, from_upload ? 1 : 0});
      out_n += count;
    }
    // Segments in a shuffled order: each one writes its own range.
    std::vector<int32_t> order(num_segments);
    for (int32_t s = 0; s < num_segments; ++s) order[s] = s;
    std::shuffle(order.begin(), order.end(), rng);
    std::vector<int32_t> shuffled;
    for (int32_t s : order) {
      shuffled.insert(shuffled.end(), segments.begin() + 4 * s, segments.begin() + 4 * s + 4);
    }
    std::vector<int32_t> want(out_n + 1, -1);
    ref::GatherPageTable(shuffled.data(), num_segments, prev.data(), upload.data(), want.data());
    DeviceArray<int32_t> d_seg(shuffled.size() + 1), d_prev(prev_n), d_up(upload_n),
        d_out(out_n + 1), d_copy(out_n + 1);
    HKV_CUDA_OK(d_seg.Upload(shuffled));
    HKV_CUDA_OK(d_prev.Upload(prev));
    HKV_CUDA_OK(d_up.Upload(upload));
    HKV_CUDA_OK(d_out.Fill(0xff));
    HKV_CUDA_OK(d_copy.Fill(0xff));
    const bool second = trial % 2 == 0;
    HKV_CUDA_OK(GatherPageTable(d_seg.get(), num_segments, d_prev.get(), d_up.get(), d_out.get(),
                                second ? d_copy.get() : nullptr, nullptr));
    HKV_CUDA_OK(cudaDeviceSynchronize());
    ASSERT_EQ(d_out.Download(), want) << "trial " << trial;
    if (second) {
      ASSERT_EQ(d_copy.Download(), want) << "trial " << trial;
    } else {
      ASSERT_EQ(d_copy.Download(), std::vector<int32_t>(out_n + 1, -1));
    }
  }
}

TEST(PageTableGatherTest, EmptyListsAndBadArguments) {
  HKV_REQUIRE_GPU();
  EXPECT_EQ(GatherPageTable(nullptr, 0, nullptr, nullptr, nullptr, nullptr, nullptr), cudaSuccess);
  EXPECT_EQ(GatherPageTable(nullptr, -1, nullptr, nullptr, nullptr, nullptr, nullptr),
            cudaErrorInvalidValue);
}

}  // namespace
}  // namespace hkv::kernels
