#include "workers/cuda/step_layout.h"

#include <map>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "headkv/selection.h"
#include "workers/cuda/sampling_extras.h"
#include "workers/sampler.h"

namespace hkv {
namespace {

using ::testing::ElementsAre;
using ::testing::ElementsAreArray;

constexpr int32_t kLayers = 2, kHeads = 2, kBlock = 4;
const StepLayoutShape kShape{kLayers, kHeads, /*vocab_size=*/100, kBlock, /*tp_rank=*/0};

// Appends one sequence whose every row holds `before` tokens and grows to `after`, each row
// with its own consecutive blocks, exactly as many as `after` needs.
void AddSeq(Batch& b, RequestId id, std::vector<TokenId> tokens, int32_t before, int32_t after,
            bool sample) {
  SequenceStep st;
  st.id = id;
  st.tokens = std::move(tokens);
  st.start_pos = before;
  st.sample = sample;
  st.sample_step = 3;
  st.sampling.temperature = 0.5f;
  st.sampling.top_k = 7;
  st.sampling.seed = 11;
  b.seqs.push_back(st);
  const int32_t blocks = (after + kBlock - 1) / kBlock;
  for (int32_t r = 0; r < kLayers * kHeads; ++r) {
    for (int32_t j = 0; j < blocks; ++j) {
      b.kv_indices.push_back(static_cast<BlockId>(100 + b.kv_indices.size()));
    }
    b.kv_indptr.push_back(static_cast<int32_t>(b.kv_indices.size()));
    b.kv_len_before.push_back(before);
    b.kv_len_after.push_back(after);
  }
}

Batch NewBatch() {
  Batch b;
  b.num_layers = kLayers;
  b.num_kv_heads = kHeads;
  b.block_size = kBlock;
  b.kv_indptr = {0};
  return b;
}

TEST(StepLayoutTest, DecodeThenPrefillLaysOutEveryField) {
  Batch b = NewBatch();
  AddSeq(b, 1, {42}, 5, 6, true);       // decode: rows of 2 blocks
  AddSeq(b, 2, {7, 8, 9}, 0, 3, true);  // prefill chunk: rows of 1 block
  const auto h = BuildHostStep(b, kShape, 0);
  ASSERT_TRUE(h.ok()) << h.status();
  EXPECT_FALSE(h->graph);
  EXPECT_EQ(h->num_decode, 1);
  EXPECT_EQ(h->real_decode, 1);
  EXPECT_EQ(h->num_prefill, 1);
  EXPECT_EQ(h->num_select, 0);
  EXPECT_THAT(h->order, ElementsAre(0, 1));
  EXPECT_THAT(h->token_start, ElementsAre(0, 1));
  EXPECT_THAT(h->ids, ElementsAre(42, 7, 8, 9));
  EXPECT_THAT(h->pos, ElementsAre(5, 0, 1, 2));
  EXPECT_EQ(h->total, 4);
  EXPECT_EQ(h->plain_tokens, 4);
  EXPECT_EQ(h->max_prefill, 3);
  EXPECT_THAT(h->cu_prefill, ElementsAre(0, 3));
  EXPECT_THAT(h->cu_select, ElementsAre(0));
  // Rows hold exactly their blocks and sequences are in internal order: the batch's index
  // list is used as it is.
  EXPECT_TRUE(h->shared_indices);
  EXPECT_EQ(h->batch_indices, &b.kv_indices);
  EXPECT_TRUE(h->indices_a.empty());
  EXPECT_THAT(h->indptr_a, ElementsAreArray(b.kv_indptr));
  EXPECT_THAT(h->last_a, ElementsAre(2, 2, 2, 2, 3, 3, 3, 3));
  // The prefill chunk starts at 0: an empty paged prefix per row.
  EXPECT_THAT(h->indptr_b, ElementsAre(0, 0, 0, 0, 0));
  EXPECT_THAT(h->last_b, ElementsAre(0, 0, 0, 0));
  EXPECT_TRUE(h->indices_b.empty());
  // Slots [L, plain_tokens, H]: the decode token is slot 5 of its row (block 2 of the row, offset
  // 1).
  ASSERT_EQ(h->slots.size(), static_cast<size_t>(kLayers * 4 * kHeads));
  for (int32_t l = 0; l < kLayers; ++l) {
    for (int32_t hh = 0; hh < kHeads; ++hh) {
      const int64_t r = b.row(0, l, hh);
      EXPECT_EQ(h->slots[(l * 4 + 0) * kHeads + hh],
                int64_t{b.kv_indices[b.kv_indptr[r] + 1]} * kBlock + 1);
      const int64_t r2 = b.row(1, l, hh);
      for (int32_t t = 0; t < 3; ++t) {
        EXPECT_EQ(h->slots[(l * 4 + 1 + t) * kHeads + hh],
                  int64_t{b.kv_indices[b.kv_indptr[r2]]} * kBlock + t);
      }
    }
  }
  // Both sample their last token, with the request's parameters.
  EXPECT_THAT(h->sample_seq, ElementsAre(0, 1));
  EXPECT_THAT(h->sample_token, ElementsAre(0, 3));
  ASSERT_EQ(h->sample_rows.size(), 2u);
  EXPECT_EQ(h->sample_rows[1].temperature, 0.5f);
  EXPECT_EQ(h->sample_rows[1].top_k, 7);
  EXPECT_EQ(h->sample_rows[1].uniform, static_cast<float>(SampleUniform(11, 3)));
}

TEST(StepLayoutTest, PrefillListedFirstIsReorderedAndCopied) {
  Batch b = NewBatch();
  AddSeq(b, 2, {7, 8, 9, 10, 11}, 2, 7, false);  // prefill with a 2-token prefix
  AddSeq(b, 1, {42}, 4, 5, true);                // decode
  const auto h = BuildHostStep(b, kShape, 0);
  ASSERT_TRUE(h.ok()) << h.status();
  EXPECT_THAT(h->order, ElementsAre(1, 0));
  EXPECT_FALSE(h->shared_indices);
  EXPECT_THAT(h->ids, ElementsAre(42, 7, 8, 9, 10, 11));
  EXPECT_THAT(h->pos, ElementsAre(4, 2, 3, 4, 5, 6));
  // indices_a lists the decode's rows first (2 blocks each), then the prefill's (2 each).
  std::vector<BlockId> want;
  for (int64_t r : {4, 5, 6, 7, 0, 1, 2, 3}) {
    want.push_back(b.kv_indices[b.kv_indptr[r]]);
    want.push_back(b.kv_indices[b.kv_indptr[r] + 1]);
  }
  EXPECT_THAT(h->indices_a, ElementsAreArray(want));
  EXPECT_THAT(h->indptr_a, ElementsAre(0, 2, 4, 6, 8, 10, 12, 14, 16));
  EXPECT_THAT(h->last_a, ElementsAre(1, 1, 1, 1, 3, 3, 3, 3));
  // The prefill's paged prefix: its first block of each row, 2 tokens in it.
  EXPECT_THAT(h->indptr_b, ElementsAre(0, 1, 2, 3, 4));
  EXPECT_THAT(h->indices_b,
              ElementsAre(b.kv_indices[0], b.kv_indices[2], b.kv_indices[4], b.kv_indices[6]));
  EXPECT_THAT(h->last_b, ElementsAre(2, 2, 2, 2));
  // Only the decode samples.
  EXPECT_THAT(h->sample_seq, ElementsAre(0));
  EXPECT_THAT(h->sample_token, ElementsAre(0));
}

TEST(StepLayoutTest, GraphStepPadsDecodesThatWriteNothing) {
  Batch b = NewBatch();
  AddSeq(b, 1, {42}, 5, 6, true);
  AddSeq(b, 2, {43}, 1, 2, true);
  AddSeq(b, 3, {44}, 0, 1, true);
  const int32_t graph = GraphBatchFor(3, 256);
  ASSERT_EQ(graph, 4);
  const auto h = BuildHostStep(b, kShape, graph);
  ASSERT_TRUE(h.ok()) << h.status();
  EXPECT_TRUE(h->graph);
  EXPECT_EQ(h->num_decode, 4);
  EXPECT_EQ(h->real_decode, 3);
  EXPECT_THAT(h->ids, ElementsAre(42, 43, 44, 0));
  EXPECT_THAT(h->pos, ElementsAre(5, 1, 0, 0));
  EXPECT_THAT(h->token_start, ElementsAre(0, 1, 2, 3));
  ASSERT_EQ(h->indptr_a.size(), 4u * kLayers * kHeads + 1);
  for (int32_t r = 0; r < kLayers * kHeads; ++r) {  // padding rows are empty
    EXPECT_EQ(h->indptr_a[3 * kLayers * kHeads + r + 1], h->indptr_a[3 * kLayers * kHeads]);
    EXPECT_EQ(h->last_a[3 * kLayers * kHeads + r], 0);
  }
  for (int32_t l = 0; l < kLayers; ++l) {
    for (int32_t hh = 0; hh < kHeads; ++hh) EXPECT_EQ(h->slots[(l * 4 + 3) * kHeads + hh], -1);
  }
  // Graph steps sample every row; the padding's sample is dropped.
  EXPECT_THAT(h->sample_seq, ElementsAre(0, 1, 2, -1));
  EXPECT_THAT(h->sample_token, ElementsAre(0, 1, 2, 3));
}

// An adaptive (adakv) compressed prefill after a static one: rows stay empty, caps are zeros
// the device replaces, and each layer gets its share, floor and reserved blocks.
TEST(StepLayoutTest, AdaptiveSelectionLaysOutLayerBudgetsAndBlocks) {
  Batch b = NewBatch();
  std::vector<TokenId> prompt(20, 5);
  AddSeq(b, 1, prompt, 0, 10, true);  // static: 8 + window 2 per head
  b.seqs[0].select = true;
  b.seqs[0].selection.window = 2;
  b.seqs[0].selection.capacity.assign(kLayers * kHeads, 8);
  SequenceStep st;
  st.id = 2;
  st.tokens = prompt;
  st.sample = true;
  st.select = true;
  st.selection.window = 2;
  st.selection.layer_budget = {10, 100};  // past = 18 per head: layer 1 keeps everything
  st.selection.adaptive_floor_fraction = 0.2f;
  st.layer_block_indptr = {0, 3, 7};
  st.layer_blocks = {50, 51, 52, 60, 61, 62, 63};
  b.seqs.push_back(st);
  for (int32_t r = 0; r < kLayers * kHeads; ++r) {  // its rows: empty until the commit
    b.kv_indptr.push_back(b.kv_indptr.back());
    b.kv_len_before.push_back(0);
    b.kv_len_after.push_back(0);
  }
  const auto h = BuildHostStep(b, kShape, 0);
  ASSERT_TRUE(h.ok()) << h.status();
  EXPECT_EQ(h->num_select, 2);
  EXPECT_THAT(h->caps, ElementsAre(8, 8, 8, 8, 0, 0, 0, 0));
  // floor(0.2 * 10 / 2) = 1; floor(0.2 * 100 / 2) = 10; totals min(budget, 2 * 18).
  EXPECT_THAT(h->ada_total, ElementsAre(-1, -1, 10, 36));
  EXPECT_THAT(h->ada_floor, ElementsAre(0, 0, 1, 10));
  EXPECT_THAT(h->ada_block_start, ElementsAre(0, 0, 0, 0, 3, 7));
  EXPECT_THAT(h->ada_blocks, ElementsAre(50, 51, 52, 60, 61, 62, 63));
  // The adaptive sequence's rows hold no blocks.
  const size_t rows = static_cast<size_t>(kLayers) * kHeads;
  for (size_t r = 0; r < rows; ++r) EXPECT_EQ(h->indptr_a[rows + r + 1], h->indptr_a[rows]);
  // Compressed prefills write no KV slot: the slot list covers the plain tokens only (none).
  EXPECT_EQ(h->total, 40);
  EXPECT_EQ(h->plain_tokens, 0);
  EXPECT_TRUE(h->slots.empty());
}

TEST(StepLayoutTest, GraphSizes) {
  EXPECT_EQ(GraphBatchFor(1, 256), 1);
  EXPECT_EQ(GraphBatchFor(17, 256), 24);
  EXPECT_EQ(GraphBatchFor(256, 256), 256);
  EXPECT_EQ(GraphBatchFor(257, 512), 0);  // above every graph size
  EXPECT_EQ(GraphBatchFor(100, 96), 0);   // above the configured largest graph
  EXPECT_EQ(GraphBatchFor(1, 0), 0);      // graphs off
}

TEST(StepLayoutTest, RanksOtherThanZeroSampleNothing) {
  Batch b = NewBatch();
  AddSeq(b, 1, {42}, 5, 6, true);
  StepLayoutShape shape = kShape;
  shape.tp_rank = 1;
  const auto h = BuildHostStep(b, shape, 0);
  ASSERT_TRUE(h.ok()) << h.status();
  EXPECT_TRUE(h->sample_rows.empty());
  EXPECT_TRUE(h->sample_seq.empty());
}

TEST(StepLayoutTest, MalformedStepsAreRejected) {
  Batch vocab = NewBatch();
  AddSeq(vocab, 1, {100}, 0, 1, true);
  EXPECT_EQ(BuildHostStep(vocab, kShape, 0).status().code(), absl::StatusCode::kInvalidArgument);

  Batch short_rows = NewBatch();
  AddSeq(short_rows, 1, {1}, 4, 5, true);
  short_rows.kv_len_after[0] = 9;  // 9 tokens in a row of 2 blocks of 4
  short_rows.kv_len_before[0] = 8;
  EXPECT_EQ(BuildHostStep(short_rows, kShape, 0).status().code(),
            absl::StatusCode::kInvalidArgument);

  Batch no_growth = NewBatch();
  AddSeq(no_growth, 1, {1, 2}, 0, 1, true);  // two tokens, a row that grows by one
  EXPECT_EQ(BuildHostStep(no_growth, kShape, 0).status().code(),
            absl::StatusCode::kInvalidArgument);

  Batch adaptive = NewBatch();
  AddSeq(adaptive, 1, {1, 2, 3}, 0, 3, true);
  adaptive.seqs[0].select = true;  // no per-head capacity and no layer budgets
  EXPECT_EQ(BuildHostStep(adaptive, kShape, 0).status().code(), absl::StatusCode::kInvalidArgument);
  adaptive.seqs[0].selection.layer_budget = {4, 4};
  adaptive.seqs[0].layer_block_indptr = {0, 2, 1};  // not monotone
  adaptive.seqs[0].layer_blocks = {7};
  EXPECT_EQ(BuildHostStep(adaptive, kShape, 0).status().code(), absl::StatusCode::kInvalidArgument);

  Batch window = NewBatch();
  AddSeq(window, 1, {1, 2, 3}, 0, 3, true);
  window.seqs[0].select = true;
  window.seqs[0].selection.capacity.assign(kLayers * kHeads, 2);
  window.seqs[0].selection.window = 4;  // longer than the prompt
  EXPECT_EQ(BuildHostStep(window, kShape, 0).status().code(), absl::StatusCode::kInvalidArgument);
}

// The last chunk of a chunked compressed prefill runs as a plain prefill chunk over its rows
// (paged prefix, KV slots) and is listed as a paged select, whose caps follow the one-step
// selects'.
TEST(StepLayoutTest, ChunkedCompressedPrefillsLastChunkIsAPagedSelect) {
  Batch b = NewBatch();
  AddSeq(b, 1, {1, 2, 3, 4, 5}, 6, 11, true);  // last chunk: rows hold 6, grow to the 11
  b.seqs[0].select = true;
  b.seqs[0].selection.window = 4;
  b.seqs[0].selection.capacity = {1, 2, 3, 4};
  AddSeq(b, 2, {7}, 3, 4, true);                 // a decode beside it
  AddSeq(b, 3, {9, 9, 9, 9, 9, 9}, 0, 3, true);  // a one-step select keeping 3 per row
  b.seqs[2].select = true;
  b.seqs[2].selection.window = 2;
  b.seqs[2].selection.capacity = {1, 1, 1, 1};
  const auto h = BuildHostStep(b, kShape, 0);
  ASSERT_TRUE(h.ok()) << h.status();
  EXPECT_EQ(h->num_decode, 1);
  EXPECT_EQ(h->num_prefill, 1);
  EXPECT_EQ(h->num_select, 1);
  EXPECT_THAT(h->order, ElementsAre(1, 0, 2));
  EXPECT_THAT(h->paged_select, ElementsAre(1));
  EXPECT_THAT(h->paged_select_len, ElementsAre(11));
  EXPECT_EQ(h->max_paged_select_len, 11);
  EXPECT_EQ(h->num_kept_seqs(), 2);
  EXPECT_THAT(h->cu_prefill, ElementsAre(0, 5));
  EXPECT_THAT(h->cu_select, ElementsAre(0, 6));
  EXPECT_THAT(h->caps, ElementsAre(1, 1, 1, 1, 1, 2, 3, 4));  // one-step select first
  EXPECT_THAT(h->pos, ElementsAre(3, 6, 7, 8, 9, 10, 0, 1, 2, 3, 4, 5));
  // Its paged prefix is the 6 tokens of the earlier chunks (2 blocks, 2 in the last).
  EXPECT_THAT(h->last_b, ElementsAre(2, 2, 2, 2));
  // Its tokens get KV slots in every row: slot 6..10 of the row's blocks.
  const int32_t first_row_block = b.kv_indices[b.kv_indptr[0]];
  EXPECT_EQ(h->slots[1 * kHeads + 0], int64_t{first_row_block + 1} * kBlock + 2);
  // Both sample: the paged select at its last token.
  EXPECT_THAT(h->sample_seq, ElementsAre(0, 1, 2));
}

// adakv's last chunk: its caps come from the device, so the layout carries each layer's shared
// total and floor over the whole prompt (11 tokens, window 4: 7 scored per head).
TEST(StepLayoutTest, AdaptiveLastChunkCarriesTheLayerSplit) {
  Batch b = NewBatch();
  AddSeq(b, 1, {1, 2, 3, 4, 5}, 6, 11, true);
  b.seqs[0].select = true;
  b.seqs[0].selection.window = 4;
  b.seqs[0].selection.layer_budget.assign(kShape.num_layers, 6);
  b.seqs[0].selection.adaptive_floor_fraction = 0.5f;
  const auto h = BuildHostStep(b, kShape, 0);
  ASSERT_TRUE(h.ok()) << h.status();
  ASSERT_THAT(h->paged_select, ElementsAre(0));
  const AdaKvShares want = AdaKvSplit(6, kShape.num_kv_heads, 7, 0.5f);
  ASSERT_EQ(h->paged_ada_total.size(), static_cast<size_t>(kShape.num_layers));
  for (int32_t l = 0; l < kShape.num_layers; ++l) {
    EXPECT_EQ(h->paged_ada_total[l], want.total);
    EXPECT_EQ(h->paged_ada_floor[l], want.floor_cap);
  }
  EXPECT_EQ(h->caps.size(), static_cast<size_t>(kShape.num_layers) * kShape.num_kv_heads);
  // A budget per layer is required.
  b.seqs[0].selection.layer_budget.pop_back();
  EXPECT_EQ(BuildHostStep(b, kShape, 0).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(StepLayoutTest, NSamplesOfAPrefillAreRowsOfTheSamePositionWithTheirOwnSeeds) {
  Batch b = NewBatch();
  AddSeq(b, 1, {42}, 5, 6, true);
  AddSeq(b, 2, {7, 8, 9}, 0, 3, true);
  b.seqs[1].num_samples = 3;
  b.seqs[1].sampling.min_p = 0.1f;
  const auto h = BuildHostStep(b, kShape, 0);
  ASSERT_TRUE(h.ok()) << h.status();
  EXPECT_THAT(h->sample_seq, ElementsAre(0, 1, 1, 1));
  EXPECT_THAT(h->sample_index, ElementsAre(0, 0, 1, 2));
  EXPECT_THAT(h->sample_token, ElementsAre(0, 3, 3, 3));
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(h->sample_rows[1 + i].uniform,
              static_cast<float>(SampleUniform(SampleSeed(11, i), 3)));
    EXPECT_EQ(h->sample_rows[1 + i].min_p, 0.1f);
  }
}

TEST(StepLayoutTest, SamplingExtrasListEachRowsPenalisedTokens) {
  Batch b = NewBatch();
  AddSeq(b, 1, {4, 5, 5, 6}, 0, 4, true);  // prompt 4 5, then 5 and 6 generated
  AddSeq(b, 2, {9}, 5, 6, true);           // no penalties: no history, no entries
  b.seqs[0].num_prompt_tokens = 2;
  b.seqs[0].sampling.frequency_penalty = 1.0f;
  b.seqs[0].sampling.min_tokens = 5;
  b.seqs[0].min_tokens_banned = {99, 200};  // 200 is outside the vocabulary
  b.seqs[0].sample_step = 2;
  b.seqs[1].sampling.logprobs = 4;
  EXPECT_TRUE(NeedsSamplingExtras(b.seqs[0]));
  EXPECT_TRUE(NeedsSamplingExtras(b.seqs[1]));
  TokenHistories histories;
  histories.Observe(b);
  const auto h = BuildHostStep(b, kShape, 0);
  ASSERT_TRUE(h.ok()) << h.status();
  const SamplingExtras x = BuildSamplingExtras(b, *h, histories, kShape.vocab_size);
  EXPECT_TRUE(x.penalties);
  EXPECT_EQ(x.top, 4);
  ASSERT_EQ(x.params.size(), h->sample_rows.size());
  // Internal order: the decode (seq 2) first, then the prefill (seq 1).
  const int32_t prefill_row = h->order[h->sample_seq[0]] == 0 ? 0 : 1;
  const int32_t decode_row = 1 - prefill_row;
  EXPECT_EQ(x.indptr[decode_row + 1] - x.indptr[decode_row], 0);
  EXPECT_EQ(x.params[prefill_row].ban, 1);
  std::map<TokenId, int32_t> entries;
  for (int32_t e = x.indptr[prefill_row]; e < x.indptr[prefill_row + 1]; ++e) {
    entries[x.ids[e]] = x.counts[e];
  }
  EXPECT_EQ(entries, (std::map<TokenId, int32_t>{{4, 0}, {5, 1}, {6, 1}, {99, -1}}));
}

}  // namespace
}  // namespace hkv
