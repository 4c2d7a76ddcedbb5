// FillUniformMatrix on the GPU against UniformFromHash on the host: a full matrix, a shard at
// row/column offsets equal to the same part of the full matrix, constant fills, bad arguments.

#include "kernels/init_ops.h"

#include <cmath>
#include <vector>

#include "kernels/test_util.h"

namespace hkv::kernels {
namespace {

using testing::DeviceArray;

std::vector<float> Download(const DeviceArray<uint16_t>& d, DType dtype) {
  return testing::FromStorage(d.Download(), dtype);
}

TEST(InitOpsTest, FullMatrixMatchesHostReference) {
  HKV_REQUIRE_GPU();
  for (DType dtype : {DType::kBf16, DType::kFp16}) {
    const int64_t rows = 37, cols = 96;
    DeviceArray<uint16_t> d(rows * cols);
    HKV_CUDA_OK(FillUniformMatrix(dtype, d.get(), cols, rows, cols, 0, 0, cols, 42, 0.5f, 0.0f,
                                  nullptr));
    HKV_CUDA_OK(cudaDeviceSynchronize());
    const std::vector<float> got = Download(d, dtype);
    double sum = 0.0;
    for (int64_t i = 0; i < rows * cols; ++i) {
      const float want =
          testing::FromStorage(testing::ToStorage({UniformFromHash(42, i, 0.5f)}, dtype), dtype)[0];
      ASSERT_EQ(got[i], want) << i;
      ASSERT_LE(std::abs(got[i]), 0.5f);
      sum += got[i];
    }
    EXPECT_LT(std::abs(sum / (rows * cols)), 0.05);  // centred
  }
}

TEST(InitOpsTest, ShardEqualsThePartOfTheFullMatrix) {
  HKV_REQUIRE_GPU();
  const int64_t rows = 64, cols = 80;
  DeviceArray<uint16_t> full(rows * cols), shard(16 * 40);
  HKV_CUDA_OK(FillUniformMatrix(DType::kBf16, full.get(), cols, rows, cols, 0, 0, cols, 7, 1.0f,
                                0.0f, nullptr));
  // Rows 32..47, columns 40..79, written into a dense [16, 40] buffer.
  HKV_CUDA_OK(FillUniformMatrix(DType::kBf16, shard.get(), 40, 16, 40, 32, 40, cols, 7, 1.0f,
                                0.0f, nullptr));
  HKV_CUDA_OK(cudaDeviceSynchronize());
  const std::vector<float> f = Download(full, DType::kBf16), s = Download(shard, DType::kBf16);
  for (int64_t r = 0; r < 16; ++r) {
    for (int64_t c = 0; c < 40; ++c) ASSERT_EQ(s[r * 40 + c], f[(32 + r) * cols + 40 + c]);
  }
}

TEST(InitOpsTest, ZeroScaleFillsAConstantAndBadArgumentsAreRejected) {
  HKV_REQUIRE_GPU();
  DeviceArray<uint16_t> d(8 * 16);
  HKV_CUDA_OK(FillUniformMatrix(DType::kBf16, d.get(), 16, 8, 16, 0, 0, 16, 1, 0.0f, 1.0f,
                                nullptr));
  HKV_CUDA_OK(cudaDeviceSynchronize());
  for (float v : Download(d, DType::kBf16)) ASSERT_EQ(v, 1.0f);
  EXPECT_EQ(FillUniformMatrix(DType::kBf16, d.get(), 8, 8, 16, 0, 0, 16, 1, 1.0f, 0.0f, nullptr),
            cudaErrorInvalidValue);  // ld < cols
  EXPECT_EQ(FillUniformMatrix(DType::kBf16, d.get(), 16, 8, 16, 0, 8, 16, 1, 1.0f, 0.0f, nullptr),
            cudaErrorInvalidValue);  // columns past the logical width
}

}  // namespace
}  // namespace hkv::kernels
