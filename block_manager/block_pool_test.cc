#include "block_manager/block_pool.h"

#include <set>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace hkv {
namespace {

using ::testing::ElementsAre;

TEST(BlockPoolTest, AllocatesDistinctHeldBlocks) {
  BlockPool pool(8);
  EXPECT_EQ(pool.num_total(), 8);
  EXPECT_EQ(pool.num_free(), 8);
  auto a = pool.Allocate(3);
  ASSERT_TRUE(a.has_value());
  EXPECT_THAT(*a, ElementsAre(0, 1, 2));
  auto b = pool.Allocate(5);
  ASSERT_TRUE(b.has_value());
  std::set<BlockId> all(a->begin(), a->end());
  all.insert(b->begin(), b->end());
  EXPECT_EQ(all.size(), 8u);
  for (BlockId id : all) EXPECT_TRUE(pool.held(id));
  EXPECT_EQ(pool.num_free(), 0);
  EXPECT_EQ(pool.num_used(), 8);
  auto none = pool.Allocate(0);
  ASSERT_TRUE(none.has_value());
  EXPECT_TRUE(none->empty());
}

TEST(BlockPoolTest, ExhaustionReturnsNulloptAndLeavesPoolUnchanged) {
  BlockPool pool(4);
  auto a = pool.Allocate(3);
  ASSERT_TRUE(a.has_value());
  EXPECT_FALSE(pool.Allocate(2).has_value());
  EXPECT_EQ(pool.num_free(), 1);
  EXPECT_FALSE(pool.held(3));
  for (BlockId id : *a) EXPECT_TRUE(pool.held(id));
  auto last = pool.Allocate(1);
  ASSERT_TRUE(last.has_value());
  EXPECT_THAT(*last, ElementsAre(3));
  EXPECT_FALSE(pool.Allocate(1).has_value());
  BlockPool empty(0);
  EXPECT_FALSE(empty.Allocate(1).has_value());
}

TEST(BlockPoolTest, ReleaseReturnsABlockToTheFreeList) {
  BlockPool pool(2);
  auto a = pool.Allocate(1);
  ASSERT_TRUE(a.has_value());
  const BlockId id = (*a)[0];
  EXPECT_TRUE(pool.held(id));
  EXPECT_EQ(pool.num_free(), 1);
  pool.Release(id);
  EXPECT_FALSE(pool.held(id));
  EXPECT_EQ(pool.num_free(), 2);
  // The most recently freed block is reused first.
  auto again = pool.Allocate(1);
  ASSERT_TRUE(again.has_value());
  EXPECT_EQ((*again)[0], id);
}

TEST(BlockPoolTest, NoLeakAfterEverythingIsReleased) {
  BlockPool pool(16);
  std::vector<BlockId> held;
  for (int i = 0; i < 4; ++i) {
    auto a = pool.Allocate(4);
    ASSERT_TRUE(a.has_value());
    held.insert(held.end(), a->begin(), a->end());
  }
  for (BlockId id : held) pool.Release(id);
  EXPECT_EQ(pool.num_free(), 16);
  for (BlockId id = 0; id < 16; ++id) EXPECT_FALSE(pool.held(id));
  EXPECT_TRUE(pool.Allocate(16).has_value());
}

TEST(BlockPoolTest, SharedBlocksReturnWhenTheLastReferenceGoes) {
  BlockPool pool(4);
  const BlockId id = (*pool.Allocate(1))[0];
  pool.IncRef(id);
  pool.IncRef(id);
  EXPECT_EQ(pool.ref_count(id), 3);
  EXPECT_EQ(pool.num_free(), 3);  // held once, however many share it
  pool.Release(id);
  pool.Release(id);
  EXPECT_TRUE(pool.held(id));
  EXPECT_EQ(pool.num_free(), 3);
  pool.Release(id);
  EXPECT_FALSE(pool.held(id));
  EXPECT_EQ(pool.num_free(), 4);
  EXPECT_DEATH(pool.IncRef(id), "IncRef of free block");
}

TEST(BlockPoolDeathTest, ReleasingAFreeBlockIsAnInvariantViolation) {
  BlockPool pool(2);
  EXPECT_DEATH(pool.Release(1), "Release of free block 1");
  auto a = pool.Allocate(1);
  ASSERT_TRUE(a.has_value());
  pool.Release((*a)[0]);
  EXPECT_DEATH(pool.Release((*a)[0]), "Release of free block");
}

}  // namespace
}  // namespace hkv
