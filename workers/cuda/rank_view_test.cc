#include "workers/cuda/rank_view.h"

#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace hkv {
namespace {

using ::testing::ElementsAre;

constexpr int32_t kLayers = 2, kHeads = 4, kSeqs = 3, kPart = 1000;

// A batch of kSeqs sequences over every (layer, head) row. The pool is split in partitions of
// kPart blocks, partition p belonging to the rank that holds placement slot p's heads; each
// row lists (row % 3) + 1 blocks of the partition of the rank owning its head, and row-specific
// lengths, so that any mix-up of rows shows.
Batch FullBatch(const std::vector<int32_t>& rank_of_head, std::vector<int32_t>* next_id) {
  Batch b;
  b.num_layers = kLayers;
  b.num_kv_heads = kHeads;
  b.block_size = 16;
  b.kv_indptr = {0};
  for (int32_t i = 0; i < kSeqs; ++i) {
    SequenceStep st;
    st.id = 10 + i;
    st.tokens = {1};
    st.selection.capacity.resize(kLayers * kHeads);
    for (int32_t r = 0; r < kLayers * kHeads; ++r) st.selection.capacity[r] = 100 * i + r;
    b.seqs.push_back(st);
    for (int32_t l = 0; l < kLayers; ++l) {
      for (int32_t h = 0; h < kHeads; ++h) {
        const int64_t row = b.row(i, l, h);
        const int32_t rank = rank_of_head[l * kHeads + h];
        for (int64_t j = 0; j < row % 3 + 1; ++j) b.kv_indices.push_back((*next_id)[rank]++);
        b.kv_indptr.push_back(static_cast<int32_t>(b.kv_indices.size()));
        b.kv_len_before.push_back(static_cast<int32_t>(row));
        b.kv_len_after.push_back(static_cast<int32_t>(row + 1));
      }
    }
  }
  return b;
}

// Checks every rank's view against the full batch, for a placement head_of_slot [L * H].
void CheckRanks(int32_t ranks, const std::vector<int32_t>& head_of_slot) {
  const int32_t hl = kHeads / ranks;
  std::vector<int32_t> rank_of_head(kLayers * kHeads);
  for (int32_t l = 0; l < kLayers; ++l) {
    for (int32_t s = 0; s < kHeads; ++s)
      rank_of_head[l * kHeads + head_of_slot[l * kHeads + s]] = s / hl;
  }
  std::vector<int32_t> next_id(ranks);
  for (int32_t r = 0; r < ranks; ++r) next_id[r] = r * kPart;
  Batch g = FullBatch(rank_of_head, &next_id);
  g.block_copies = {{5, 6}, {kPart + 7, kPart + 8}};
  g.forks = {{1, 2}};
  g.released = {9};
  int64_t rows_seen = 0;
  for (int32_t rank = 0; rank < ranks; ++rank) {
    SCOPED_TRACE(testing::Message() << ranks << " ranks, rank " << rank);
    std::vector<int32_t> global_head;
    for (int32_t l = 0; l < kLayers; ++l) {
      for (int32_t j = 0; j < hl; ++j)
        global_head.push_back(head_of_slot[l * kHeads + rank * hl + j]);
    }
    const RankSlice slice{rank, kLayers, kHeads, &global_head, int64_t{rank} * kPart, kPart};
    const auto local = RankView(g, slice);
    ASSERT_TRUE(local.ok()) << local.status();
    EXPECT_EQ(local->num_layers, kLayers);
    EXPECT_EQ(local->num_kv_heads, hl);
    EXPECT_EQ(local->block_size, g.block_size);
    ASSERT_EQ(local->seqs.size(), g.seqs.size());
    ASSERT_EQ(local->kv_indptr.size(), static_cast<size_t>(local->num_rows() + 1));
    for (int32_t i = 0; i < kSeqs; ++i) {
      EXPECT_EQ(local->seqs[i].id, g.seqs[i].id);
      for (int32_t l = 0; l < kLayers; ++l) {
        for (int32_t j = 0; j < hl; ++j) {
          const int32_t head = global_head[l * hl + j];
          const int64_t lr = local->row(i, l, j), gr = g.row(i, l, head);
          EXPECT_EQ(local->kv_len_before[lr], g.kv_len_before[gr]);
          EXPECT_EQ(local->kv_len_after[lr], g.kv_len_after[gr]);
          ASSERT_EQ(local->kv_indptr[lr + 1] - local->kv_indptr[lr],
                    g.kv_indptr[gr + 1] - g.kv_indptr[gr]);
          for (int32_t k = 0; k < g.kv_indptr[gr + 1] - g.kv_indptr[gr]; ++k) {
            EXPECT_EQ(local->kv_indices[local->kv_indptr[lr] + k],
                      g.kv_indices[g.kv_indptr[gr] + k] - rank * kPart);
          }
          EXPECT_EQ(local->seqs[i].selection.capacity[l * hl + j],
                    g.seqs[i].selection.capacity[l * kHeads + head]);
          ++rows_seen;
        }
      }
    }
    // Only the copies that start in the rank's partition, in its ids.
    if (rank == 0) {
      EXPECT_THAT(local->block_copies, ElementsAre(std::pair<BlockId, BlockId>(5, 6)));
    } else if (rank == 1) {
      EXPECT_THAT(local->block_copies, ElementsAre(std::pair<BlockId, BlockId>(7, 8)));
    } else {
      EXPECT_TRUE(local->block_copies.empty());
    }
    // Sequence-state changes reach every rank as they are.
    EXPECT_EQ(local->forks, g.forks);
    EXPECT_EQ(local->released, g.released);
  }
  EXPECT_EQ(rows_seen, g.num_rows());  // every global row belongs to exactly one rank
}

std::vector<int32_t> Contiguous() {
  std::vector<int32_t> p;
  for (int32_t l = 0; l < kLayers; ++l) {
    for (int32_t h = 0; h < kHeads; ++h) p.push_back(h);
  }
  return p;
}

TEST(RankViewTest, TwoRanksContiguous) { CheckRanks(2, Contiguous()); }
TEST(RankViewTest, FourRanksContiguous) { CheckRanks(4, Contiguous()); }

TEST(RankViewTest, BalancedPlacementsPermuteHeadsPerLayer) {
  CheckRanks(2, {3, 0, 2, 1, 1, 2, 0, 3});
  CheckRanks(4, {2, 3, 1, 0, 0, 2, 3, 1});
}

TEST(RankViewTest, ABlockOfAnotherPartitionIsInvalid) {
  std::vector<int32_t> rank_of_head(kLayers * kHeads, 0);
  std::vector<int32_t> next_id = {0};
  Batch g = FullBatch(rank_of_head, &next_id);
  g.kv_indices[0] = kPart;  // rank 1's block in rank 0's row
  const std::vector<int32_t> global_head = {0, 1, 0, 1};
  const RankSlice slice{0, kLayers, kHeads, &global_head, 0, kPart};
  const auto local = RankView(g, slice);
  EXPECT_EQ(local.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(local.status().message(), testing::HasSubstr("outside rank 0's pool"));
}

TEST(RankViewTest, ABatchOfAnotherShapeIsInvalid) {
  std::vector<int32_t> rank_of_head(kLayers * kHeads, 0);
  std::vector<int32_t> next_id = {0};
  Batch g = FullBatch(rank_of_head, &next_id);
  const std::vector<int32_t> global_head = {0, 1, 0, 1};
  RankSlice slice{0, kLayers, kHeads, &global_head, 0, kPart};
  g.kv_len_after.pop_back();
  EXPECT_EQ(RankView(g, slice).status().code(), absl::StatusCode::kInvalidArgument);
  g.kv_len_after.push_back(1);
  g.seqs[0].selection.capacity.pop_back();
  EXPECT_EQ(RankView(g, slice).status().code(), absl::StatusCode::kInvalidArgument);
}

// An adaptive (adakv) selection splits a layer's budget over every head: no rank can run it.
TEST(RankViewTest, AnAdaptiveSelectionIsInvalid) {
  std::vector<int32_t> rank_of_head(kLayers * kHeads, 0);
  std::vector<int32_t> next_id = {0};
  Batch g = FullBatch(rank_of_head, &next_id);
  g.seqs[1].select = true;
  g.seqs[1].selection.capacity.clear();
  g.seqs[1].selection.layer_budget = {64, 64};
  const std::vector<int32_t> global_head = {0, 1, 0, 1};
  const RankSlice slice{0, kLayers, kHeads, &global_head, 0, kPart};
  const auto local = RankView(g, slice);
  EXPECT_EQ(local.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(local.status().message(), testing::HasSubstr("adaptive selection"));
}

}  // namespace
}  // namespace hkv
