#include "block_manager/kv_cache_manager.h"

#include <algorithm>
#include <map>
#include <numeric>
#include <random>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace hkv {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;

KvCacheConfig Config(int32_t blocks, int32_t block_size = 4, int32_t layers = 2,
                     int32_t heads = 2) {
  KvCacheConfig c;
  c.num_blocks = blocks;
  c.block_size = block_size;
  c.num_layers = layers;
  c.num_kv_heads = heads;
  return c;
}

// Everything observable about the manager's state for `seqs`.
struct Snapshot {
  int32_t num_free;
  std::vector<int32_t> held;
  KvCsr csr;
  bool operator==(const Snapshot& o) const {
    return num_free == o.num_free && held == o.held && csr.indptr == o.csr.indptr &&
           csr.indices == o.csr.indices && csr.last_len == o.csr.last_len &&
           csr.num_tokens == o.csr.num_tokens;
  }
};

Snapshot Take(const KvCacheManager& m, const std::vector<RequestId>& seqs) {
  Snapshot s{m.num_free_blocks(), {}, m.ExportCsr(seqs)};
  for (BlockId b = 0; b < m.num_total_blocks(); ++b) s.held.push_back(m.pool().held(b));
  return s;
}

TEST(KvCacheManagerTest, Footprints) {
  KvCacheManager m(Config(100));
  EXPECT_EQ(m.num_rows_per_seq(), 4);
  EXPECT_EQ(m.FootprintBlocks(std::vector<int32_t>{1, 4, 5, 0}), 1 + 1 + 2 + 0);
  EXPECT_EQ(m.FootprintBlocksUniform(9), 4 * 3);
  EXPECT_EQ(m.FootprintBlocksUniform(0), 0);
  EXPECT_EQ(m.NewBlocksNeeded(7, std::vector<int32_t>{1, 4, 5, 0}), 4);  // unknown = fresh
  ASSERT_TRUE(m.Append(7, std::vector<int32_t>{1, 4, 5, 0}));
  EXPECT_EQ(m.NewBlocksNeeded(7, std::vector<int32_t>{3, 1, 3, 1}), 0 + 1 + 0 + 1);
  EXPECT_EQ(m.NewBlocksNeededUniform(7, 4), 1 + 1 + 1 + 1);
}

TEST(KvCacheManagerTest, PerHeadTablesAndCsrExport) {
  KvCacheManager m(Config(100));
  ASSERT_TRUE(m.Append(1, std::vector<int32_t>{5, 1, 0, 8}));  // blocks 0-1 | 2 | - | 3-4
  ASSERT_TRUE(m.AppendUniform(2, 3));                           // blocks 5, 6, 7, 8
  EXPECT_THAT(m.RowLengths(1), ElementsAre(5, 1, 0, 8));
  EXPECT_THAT(m.Table(1, 0, 0).blocks, ElementsAre(0, 1));
  EXPECT_THAT(m.Table(1, 1, 1).blocks, ElementsAre(3, 4));
  EXPECT_EQ(m.SequenceBlocks(1), 5);
  EXPECT_EQ(m.SequenceBlocks(2), 4);

  const KvCsr csr = m.ExportCsr(std::vector<RequestId>{2, 1});
  EXPECT_THAT(csr.indptr, ElementsAre(0, 1, 2, 3, 4, 6, 7, 7, 9));
  EXPECT_THAT(csr.indices, ElementsAre(5, 6, 7, 8, 0, 1, 2, 3, 4));
  EXPECT_THAT(csr.last_len, ElementsAre(3, 3, 3, 3, 1, 1, 0, 4));
  EXPECT_THAT(csr.num_tokens, ElementsAre(3, 3, 3, 3, 5, 1, 0, 8));
  EXPECT_THAT(m.BlocksPerLayer(), ElementsAre(3 + 2, 2 + 2));

  // Growth fills the partial last block before taking a new one.
  ASSERT_TRUE(m.Append(1, std::vector<int32_t>{3, 4, 1, 1}));
  EXPECT_THAT(m.RowLengths(1), ElementsAre(8, 5, 1, 9));
  EXPECT_THAT(m.Table(1, 0, 0).blocks, ElementsAre(0, 1));
  EXPECT_THAT(m.Table(1, 0, 1).blocks, ElementsAre(2, 9));
  EXPECT_THAT(m.Table(1, 1, 0).blocks, ElementsAre(10));
  EXPECT_THAT(m.Table(1, 1, 1).blocks, ElementsAre(3, 4, 11));
  EXPECT_EQ(m.Table(1, 1, 1).last_len(4), 1);
}

TEST(KvCacheManagerTest, AppendThatDoesNotFitChangesNothing) {
  KvCacheManager m(Config(6));
  ASSERT_TRUE(m.AppendUniform(1, 4));  // 4 blocks, 2 free
  const Snapshot before = Take(m, {1});
  EXPECT_FALSE(m.AppendUniform(1, 1));  // needs 4
  EXPECT_FALSE(m.Append(2, std::vector<int32_t>{4, 4, 4, 0}));
  EXPECT_FALSE(m.Contains(2));
  EXPECT_TRUE(Take(m, {1}) == before);
  EXPECT_TRUE(m.Append(1, std::vector<int32_t>{1, 0, 0, 1}));
  EXPECT_EQ(m.num_free_blocks(), 0);
}

TEST(KvCacheManagerTest, FreeReturnsEverything) {
  KvCacheManager m(Config(20));
  ASSERT_TRUE(m.Append(1, std::vector<int32_t>{5, 1, 0, 8}));
  ASSERT_TRUE(m.AppendUniform(2, 12));
  m.Free(1);
  m.Free(1);   // idempotent
  m.Free(99);  // unknown: no-op
  EXPECT_FALSE(m.Contains(1));
  EXPECT_EQ(m.num_free_blocks(), 20 - 12);
  m.Free(2);
  EXPECT_EQ(m.num_free_blocks(), 20);
  for (BlockId b = 0; b < 20; ++b) EXPECT_EQ(m.pool().held(b), false);
}

// Chunked compressed prefill: the rows held the whole prompt; Shrink keeps each row's first
// blocks for its kept tokens and frees the rest at once; a bad request changes nothing.
TEST(KvCacheManagerTest, ShrinkKeepsTheFirstBlocksAndFreesTheTail) {
  KvCacheManager m(Config(40));
  ASSERT_TRUE(m.AppendUniform(1, 17));  // 4 rows x 5 blocks
  ASSERT_TRUE(m.AppendUniform(2, 3));
  const std::vector<BlockId> row0 = m.Table(1, 0, 0).blocks;
  const Snapshot before = Take(m, {1, 2});
  EXPECT_EQ(m.Shrink(1, std::vector<int32_t>{9, 1, 0}).code(),
            absl::StatusCode::kInvalidArgument);  // wrong count
  EXPECT_THAT(m.Shrink(1, std::vector<int32_t>{9, 1, 18, 4}).message(), HasSubstr("row 2"));
  EXPECT_EQ(m.Shrink(1, std::vector<int32_t>{9, 1, -1, 4}).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(m.Shrink(7, std::vector<int32_t>{1, 1, 1, 1}).code(),
            absl::StatusCode::kInvalidArgument);  // unknown
  EXPECT_TRUE(Take(m, {1, 2}) == before);
  ASSERT_TRUE(m.Shrink(1, std::vector<int32_t>{9, 1, 0, 17}).ok());
  EXPECT_THAT(m.RowLengths(1), ElementsAre(9, 1, 0, 17));
  EXPECT_THAT(m.Table(1, 0, 0).blocks, ElementsAre(row0[0], row0[1], row0[2]));
  EXPECT_THAT(m.Table(1, 1, 0).blocks, IsEmpty());
  EXPECT_EQ(m.SequenceBlocks(1), 3 + 1 + 0 + 5);
  EXPECT_EQ(m.num_free_blocks(), 40 - 9 - 4);
  ASSERT_TRUE(m.AppendUniform(1, 1));  // Rows grow again from their kept length.
  EXPECT_THAT(m.RowLengths(1), ElementsAre(10, 2, 1, 18));
  m.Free(1);
  m.Free(2);
  EXPECT_EQ(m.num_free_blocks(), 40);
}

TEST(KvCacheManagerTest, AdaptiveReserveAndCommit) {
  KvCacheManager m(Config(10));
  auto res = m.ReserveLayers(1, std::vector<int32_t>{3, 2});
  ASSERT_TRUE(res.has_value());
  EXPECT_THAT(res->indptr, ElementsAre(0, 3, 5));
  EXPECT_THAT(res->blocks, ElementsAre(0, 1, 2, 3, 4));
  EXPECT_EQ(m.SequenceBlocks(1), 5);
  EXPECT_THAT(m.BlocksPerLayer(), ElementsAre(3, 2));
  EXPECT_THAT(m.RowLengths(1), ElementsAre(0, 0, 0, 0));
  EXPECT_THAT(m.ExportCsr(std::vector<RequestId>{1}).indices, IsEmpty());
  EXPECT_FALSE(m.ReserveLayers(2, std::vector<int32_t>{3, 3}).has_value());
  EXPECT_FALSE(m.Contains(2));
  EXPECT_EQ(m.num_free_blocks(), 5);

  // Layer 1 head 0 needs 2 blocks but only 2 are reserved for the whole layer with head 1's 1.
  const Snapshot before = Take(m, {1});
  absl::Status st = m.CommitAdaptive(1, std::vector<int32_t>{5, 4, 5, 1});
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(st.message()), HasSubstr("layer 1 needs 3 blocks but reserved 2"));
  EXPECT_EQ(m.CommitAdaptive(1, std::vector<int32_t>{1, 1}).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(m.CommitAdaptive(1, std::vector<int32_t>{1, -1, 1, 1}).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(m.CommitAdaptive(9, std::vector<int32_t>{1, 1, 1, 1}).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(Take(m, {1}) == before);

  ASSERT_TRUE(m.CommitAdaptive(1, std::vector<int32_t>{5, 4, 4, 0}).ok());
  EXPECT_THAT(m.Table(1, 0, 0).blocks, ElementsAre(0, 1));
  EXPECT_THAT(m.Table(1, 0, 1).blocks, ElementsAre(2));
  EXPECT_THAT(m.Table(1, 1, 0).blocks, ElementsAre(3));
  EXPECT_THAT(m.Table(1, 1, 1).blocks, IsEmpty());
  EXPECT_FALSE(m.pool().held(4));  // unused reservation freed
  EXPECT_EQ(m.num_free_blocks(), 6);
  EXPECT_EQ(m.SequenceBlocks(1), 4);
  EXPECT_EQ(m.CommitAdaptive(1, std::vector<int32_t>{5, 4, 4, 0}).code(),
            absl::StatusCode::kInvalidArgument);  // already committed
  ASSERT_TRUE(m.AppendUniform(1, 1));  // decode appends to every head
  EXPECT_THAT(m.RowLengths(1), ElementsAre(6, 5, 5, 1));

  ASSERT_TRUE(m.ReserveLayers(2, std::vector<int32_t>{1, 1}).has_value());
  m.Free(2);  // frees an uncommitted reservation
  m.Free(1);
  EXPECT_EQ(m.num_free_blocks(), 10);
}

TEST(KvCacheManagerTest, PartitionedPoolKeepsEachRowInItsRanksRange) {
  // Two tensor-parallel ranks, 8 blocks each; rows (layer, head) 0 and 3 on rank 1.
  KvCacheConfig c = Config(16);
  c.num_partitions = 2;
  c.row_partition = {1, 0, 0, 1};
  KvCacheManager m(c);
  ASSERT_TRUE(m.Append(1, std::vector<int32_t>{5, 1, 4, 9}));  // blocks 2, 1, 1, 3
  for (int32_t l = 0; l < 2; ++l) {
    for (int32_t h = 0; h < 2; ++h) {
      for (BlockId b : m.Table(1, l, h).blocks) {
        EXPECT_EQ(b / 8, c.row_partition[l * 2 + h]) << "layer " << l << " head " << h;
      }
    }
  }
  EXPECT_EQ(m.pool().num_free(0), 6);
  EXPECT_EQ(m.pool().num_free(1), 3);
  // Rank 1 has 3 blocks left: a request needing 4 there fails and changes nothing, though
  // rank 0 has room.
  EXPECT_FALSE(m.Append(2, std::vector<int32_t>{8, 0, 0, 8}));
  EXPECT_EQ(m.pool().num_free(), 9);
  ASSERT_TRUE(m.Append(2, std::vector<int32_t>{3, 7, 7, 7}));  // rank 0: 4 blocks, rank 1: 3
  EXPECT_EQ(m.pool().num_free(1), 0);
  m.Free(1);
  // Decode growth stays in each row's partition too.
  ASSERT_TRUE(m.AppendUniform(2, 2));
  for (int32_t r = 0; r < 4; ++r) {
    for (BlockId b : m.Table(2, r / 2, r % 2).blocks) EXPECT_EQ(b / 8, c.row_partition[r]);
  }
  m.Free(2);
  EXPECT_EQ(m.pool().num_free(0), 8);
  EXPECT_EQ(m.pool().num_free(1), 8);
}

TEST(KvCacheManagerTest, ForkSharesBlocksAndCopiesThePartialBlockOnWrite) {
  // One layer, two KV heads with different lengths (a compressed prompt): head 0 ends in a
  // partial block, head 1 exactly on a block boundary.
  KvCacheManager m(Config(20, /*block_size=*/4, /*layers=*/1, /*heads=*/2));
  ASSERT_TRUE(m.Append(1, std::vector<int32_t>{6, 8}));  // 2 + 2 blocks
  EXPECT_EQ(m.num_free_blocks(), 16);
  ASSERT_TRUE(m.Fork(1, 2).ok());
  ASSERT_TRUE(m.Fork(1, 3).ok());
  EXPECT_EQ(m.num_free_blocks(), 16);  // shared blocks are counted once
  EXPECT_EQ(m.Table(2, 0, 0).blocks, m.Table(1, 0, 0).blocks);
  EXPECT_EQ(m.pool().ref_count(m.Table(1, 0, 0).blocks[0]), 3);
  EXPECT_EQ(m.Fork(9, 4).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(m.Fork(1, 2).code(), absl::StatusCode::kInvalidArgument);

  // A decode token in seq 2: head 0 copies its shared partial block; head 1 starts a new one.
  EXPECT_EQ(m.NewBlocksNeededUniform(2, 1), 2);
  const BlockId partial = m.Table(1, 0, 0).blocks[1];
  ASSERT_TRUE(m.AppendUniform(2, 1));
  EXPECT_EQ(m.num_free_blocks(), 14);
  const BlockId copy = m.Table(2, 0, 0).blocks[1];
  EXPECT_NE(copy, partial);
  EXPECT_EQ(m.Table(2, 0, 0).blocks[0], m.Table(1, 0, 0).blocks[0]);  // full: still shared
  EXPECT_THAT(m.TakeBlockCopies(), ElementsAre(std::make_pair(partial, copy)));
  EXPECT_THAT(m.TakeBlockCopies(), IsEmpty());
  EXPECT_EQ(m.pool().ref_count(partial), 2);

  // Seq 3 copies too; seq 1, the last holder, then writes its partial block in place.
  ASSERT_TRUE(m.AppendUniform(3, 1));
  EXPECT_EQ(m.TakeBlockCopies().size(), 1u);
  EXPECT_EQ(m.NewBlocksNeededUniform(1, 1), 1);  // head 1's new block only
  ASSERT_TRUE(m.AppendUniform(1, 1));
  EXPECT_THAT(m.TakeBlockCopies(), IsEmpty());
  EXPECT_EQ(m.Table(1, 0, 0).blocks[1], partial);

  // Freeing is by reference: the shared full blocks stay until their last holder goes.
  const BlockId full = m.Table(1, 0, 0).blocks[0];
  m.Free(1);
  m.Free(2);
  EXPECT_TRUE(m.pool().held(full));
  m.Free(3);
  EXPECT_FALSE(m.pool().held(full));
  EXPECT_EQ(m.num_free_blocks(), 20);
}

TEST(KvCacheManagerTest, ACopyThatDoesNotFitChangesNothing) {
  KvCacheManager m(Config(2, /*block_size=*/4, /*layers=*/1, /*heads=*/1));
  ASSERT_TRUE(m.Append(1, std::vector<int32_t>{3}));
  ASSERT_TRUE(m.Fork(1, 2).ok());
  ASSERT_TRUE(m.Append(3, std::vector<int32_t>{1}));  // the pool is now full
  const Snapshot before = Take(m, {1, 2, 3});
  EXPECT_FALSE(m.AppendUniform(2, 1));  // needs a block for the copy
  EXPECT_TRUE(Take(m, {1, 2, 3}) == before);
  EXPECT_THAT(m.TakeBlockCopies(), IsEmpty());
}

}  // namespace
}  // namespace hkv
