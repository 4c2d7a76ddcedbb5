#include "common/random.h"

#include <set>
#include <string>

#include "gtest/gtest.h"

namespace hkv {
namespace {

TEST(RandomTest, HexHasTheRequestedLengthAndAlphabet) {
  auto hex = RandomHex(16);
  ASSERT_TRUE(hex.ok()) << hex.status();
  EXPECT_EQ(hex->size(), 32u);
  EXPECT_EQ(hex->find_first_not_of("0123456789abcdef"), std::string::npos) << *hex;
}

TEST(RandomTest, ValuesDoNotRepeat) {
  // 2^-64 per pair: 100 draws that collide mean the source is not random.
  std::set<uint64_t> seen;
  for (int i = 0; i < 100; ++i) {
    auto v = RandomUint64();
    ASSERT_TRUE(v.ok()) << v.status();
    seen.insert(*v);
  }
  EXPECT_EQ(seen.size(), 100u);
}

TEST(RandomTest, FillsLargeBuffers) {
  // getrandom returns at most 32 MiB per call; a 1 MiB buffer must come back full (no zero run
  // of 64 bytes, which has probability 2^-512 per position).
  std::string buf(1 << 20, '\0');
  ASSERT_TRUE(FillRandomBytes(buf.data(), buf.size()).ok());
  EXPECT_EQ(buf.find(std::string(64, '\0')), std::string::npos);
}

}  // namespace
}  // namespace hkv
