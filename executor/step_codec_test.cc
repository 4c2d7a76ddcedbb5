// Step messages: every field of a Batch and a BatchResult survives the round trip, and damaged
// bytes (truncated anywhere, a bad tag, trailing bytes, a page table that does not fit) are
// DATA_LOSS rather than a crash.

#include "executor/step_codec.h"

#include "gtest/gtest.h"

namespace hkv {
namespace {

Batch SampleBatch() {
  Batch b;
  b.num_layers = 2;
  b.num_kv_heads = 2;
  b.block_size = 16;
  SequenceStep plain;
  plain.id = 41;
  plain.tokens = {5, 6, 7};
  plain.start_pos = 12;
  plain.sample = true;
  plain.sample_step = 3;
  plain.sampling.temperature = 0.7f;
  plain.sampling.top_k = 40;
  plain.sampling.top_p = 0.9f;
  plain.sampling.seed = 0x123456789abcULL;
  plain.sampling.presence_penalty = 0.5f;
  plain.sampling.frequency_penalty = -0.25f;
  plain.sampling.repetition_penalty = 1.3f;
  plain.sampling.min_p = 0.05f;
  plain.sampling.min_tokens = 6;
  plain.sampling.logprobs = 5;
  plain.num_prompt_tokens = 12;
  plain.num_samples = 3;
  plain.min_tokens_banned = {2, 9, 11};
  SequenceStep select;
  select.id = 42;
  select.tokens = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10};
  select.select = true;
  select.selection.window = 4;
  select.selection.pool_kernel = 5;
  select.selection.capacity = {1, 2, 3, 4};
  select.selection.layer_budget = {8, 9};
  select.selection.adaptive_floor_fraction = 0.25f;
  select.layer_block_indptr = {0, 1, 3};
  select.layer_blocks = {30, 31, 32};
  b.seqs = {plain, select};
  b.kv_indptr = {0, 1, 2, 3, 4, 5, 6, 7, 8};
  b.kv_indices = {10, 11, 12, 13, 14, 15, 16, 17};
  b.kv_len_before = {12, 12, 12, 12, 0, 0, 0, 0};
  b.kv_len_after = {15, 15, 15, 15, 5, 6, 7, 8};
  b.block_copies = {{3, 4}, {5, 6}};
  b.forks = {{41, 43}, {41, 44}};
  b.released = {7, 8, 9};
  return b;
}

void ExpectSame(const Batch& a, const Batch& b) {
  EXPECT_EQ(a.num_layers, b.num_layers);
  EXPECT_EQ(a.num_kv_heads, b.num_kv_heads);
  EXPECT_EQ(a.block_size, b.block_size);
  ASSERT_EQ(a.seqs.size(), b.seqs.size());
  for (size_t i = 0; i < a.seqs.size(); ++i) {
    const SequenceStep &x = a.seqs[i], &y = b.seqs[i];
    EXPECT_EQ(x.id, y.id);
    EXPECT_EQ(x.tokens, y.tokens);
    EXPECT_EQ(x.start_pos, y.start_pos);
    EXPECT_EQ(x.sample, y.sample);
    EXPECT_EQ(x.sample_step, y.sample_step);
    EXPECT_EQ(x.sampling.temperature, y.sampling.temperature);
    EXPECT_EQ(x.sampling.top_k, y.sampling.top_k);
    EXPECT_EQ(x.sampling.top_p, y.sampling.top_p);
    EXPECT_EQ(x.sampling.seed, y.sampling.seed);
    EXPECT_EQ(x.sampling.presence_penalty, y.sampling.presence_penalty);
    EXPECT_EQ(x.sampling.frequency_penalty, y.sampling.frequency_penalty);
    EXPECT_EQ(x.sampling.repetition_penalty, y.sampling.repetition_penalty);
    EXPECT_EQ(x.sampling.min_p, y.sampling.min_p);
    EXPECT_EQ(x.sampling.min_tokens, y.sampling.min_tokens);
    EXPECT_EQ(x.sampling.logprobs, y.sampling.logprobs);
    EXPECT_EQ(x.num_prompt_tokens, y.num_prompt_tokens);
    EXPECT_EQ(x.num_samples, y.num_samples);
    EXPECT_EQ(x.min_tokens_banned, y.min_tokens_banned);
    EXPECT_EQ(x.select, y.select);
    EXPECT_EQ(x.selection.window, y.selection.window);
    EXPECT_EQ(x.selection.pool_kernel, y.selection.pool_kernel);
    EXPECT_EQ(x.selection.capacity, y.selection.capacity);
    EXPECT_EQ(x.selection.layer_budget, y.selection.layer_budget);
    EXPECT_EQ(x.selection.adaptive_floor_fraction, y.selection.adaptive_floor_fraction);
    EXPECT_EQ(x.layer_block_indptr, y.layer_block_indptr);
    EXPECT_EQ(x.layer_blocks, y.layer_blocks);
  }
  EXPECT_EQ(a.kv_indptr, b.kv_indptr);
  EXPECT_EQ(a.kv_indices, b.kv_indices);
  EXPECT_EQ(a.kv_len_before, b.kv_len_before);
  EXPECT_EQ(a.kv_len_after, b.kv_len_after);
  EXPECT_EQ(a.block_copies, b.block_copies);
  EXPECT_EQ(a.forks, b.forks);
  EXPECT_EQ(a.released, b.released);
}

TEST(StepCodecTest, BatchRoundTrips) {
  const Batch b = SampleBatch();
  auto decoded = DecodeBatch(*EncodeBatch(b));
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  ExpectSame(b, *decoded);
}

TEST(StepCodecTest, EmptyBatchRoundTrips) {
  Batch b;
  b.num_layers = 3;
  b.num_kv_heads = 4;
  b.block_size = 16;
  b.kv_indptr = {0};
  auto decoded = DecodeBatch(*EncodeBatch(b));
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  ExpectSame(b, *decoded);
}

TEST(StepCodecTest, EveryTruncationIsDataLoss) {
  const std::vector<uint8_t> bytes = *EncodeBatch(SampleBatch());
  for (size_t n = 0; n < bytes.size(); ++n) {
    auto d = DecodeBatch(absl::MakeConstSpan(bytes.data(), n));
    ASSERT_FALSE(d.ok()) << "prefix of " << n << " bytes decoded";
    EXPECT_EQ(d.status().code(), absl::StatusCode::kDataLoss);
  }
}

TEST(StepCodecTest, RejectsBadTagTrailingBytesAndMismatchedPageTable) {
  std::vector<uint8_t> bytes = *EncodeBatch(SampleBatch());
  std::vector<uint8_t> tagged = bytes;
  tagged[0] ^= 0xff;
  EXPECT_EQ(DecodeBatch(tagged).status().code(), absl::StatusCode::kDataLoss);
  std::vector<uint8_t> longer = bytes;
  longer.push_back(0);
  EXPECT_EQ(DecodeBatch(longer).status().code(), absl::StatusCode::kDataLoss);
  Batch bad = SampleBatch();
  bad.kv_len_after.pop_back();
  EXPECT_EQ(DecodeBatch(*EncodeBatch(bad)).status().code(), absl::StatusCode::kDataLoss);
  // A page table that does not fit its batch is not even sent.
  bad = SampleBatch();
  bad.kv_indices.pop_back();
  EXPECT_EQ(EncodeBatch(bad).status().code(), absl::StatusCode::kInvalidArgument);
  bad = SampleBatch();
  bad.kv_indptr.pop_back();
  EXPECT_EQ(EncodeBatch(bad).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(StepCodecTest, HugeLengthIsDataLossWithoutAllocating) {
  std::vector<uint8_t> bytes = *EncodeBatch(SampleBatch());
  // The first sequence's token count sits after tag (4), shape (12), count (8) and id (8).
  for (int i = 0; i < 8; ++i) bytes[32 + i] = 0xff;
  EXPECT_EQ(DecodeBatch(bytes).status().code(), absl::StatusCode::kDataLoss);
}

TEST(StepCodecTest, ResultRoundTripsAndRejectsDamage) {
  BatchResult r;
  r.seqs.resize(2);
  r.seqs[0].id = 7;
  r.seqs[0].token = 99;
  r.seqs[1].id = 8;
  r.seqs[1].kept_per_head = {1, 2, 3, 4};
  r.seqs[1].logits = {0.5f, -1.25f};
  r.seqs[1].extra_tokens = {5, 6};
  r.seqs[1].logprobs.resize(3);
  r.seqs[1].logprobs[0] = {12, -0.5f, {12, 3}, {-0.5f, -1.5f}};
  r.seqs[1].logprobs[2] = {6, -2.0f, {}, {}};
  const std::vector<uint8_t> bytes = EncodeBatchResult(r);
  auto d = DecodeBatchResult(bytes);
  ASSERT_TRUE(d.ok()) << d.status();
  ASSERT_EQ(d->seqs.size(), 2u);
  EXPECT_EQ(d->seqs[0].id, 7);
  EXPECT_EQ(d->seqs[0].token, 99);
  EXPECT_EQ(d->seqs[1].kept_per_head, r.seqs[1].kept_per_head);
  EXPECT_EQ(d->seqs[1].logits, r.seqs[1].logits);
  EXPECT_EQ(d->seqs[1].extra_tokens, r.seqs[1].extra_tokens);
  ASSERT_EQ(d->seqs[1].logprobs.size(), 3u);
  for (size_t i = 0; i < 3; ++i) {
    const TokenLogprobs &x = d->seqs[1].logprobs[i], &y = r.seqs[1].logprobs[i];
    EXPECT_EQ(x.token, y.token);
    EXPECT_EQ(x.logprob, y.logprob);
    EXPECT_EQ(x.top_ids, y.top_ids);
    EXPECT_EQ(x.top_logprobs, y.top_logprobs);
  }
  for (size_t n = 0; n < bytes.size(); ++n) {
    EXPECT_EQ(DecodeBatchResult(absl::MakeConstSpan(bytes.data(), n)).status().code(),
              absl::StatusCode::kDataLoss);
  }
  Batch empty;
  empty.kv_indptr = {0};
  EXPECT_EQ(DecodeBatchResult(*EncodeBatch(empty)).status().code(), absl::StatusCode::kDataLoss);
}

TEST(StepCodecTest, GroupSetupRoundTrips) {
  GroupSetup g;
  g.nccl_id = std::vector<uint8_t>(128, 7);
  g.head_of_slot = {1, 0, 3, 2};
  g.blocks_per_rank = 1LL << 40;
  const std::vector<uint8_t> bytes = EncodeGroupSetup(g);
  auto d = DecodeGroupSetup(bytes);
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->nccl_id, g.nccl_id);
  EXPECT_EQ(d->head_of_slot, g.head_of_slot);
  EXPECT_EQ(d->blocks_per_rank, g.blocks_per_rank);
  EXPECT_EQ(DecodeGroupSetup(absl::MakeConstSpan(bytes.data(), bytes.size() - 1)).status().code(),
            absl::StatusCode::kDataLoss);
}

// A decode-like run: rows grow by a block now and then, a partial block is replaced
// (copy-on-write), one sequence leaves, one arrives, one comes back after a step away. Every
// decoded step equals the original, and steady steps send only the blocks that changed.
TEST(StepCodecTest, PageTablesAreSentAsChangesAndDecodeExactly) {
  constexpr int32_t kLayers = 2, kHeads = 3, kRows = kLayers * kHeads;
  struct Seq {
    RequestId id;
    std::vector<std::vector<BlockId>> rows;
  };
  std::vector<Seq> seqs = {{1, {}}, {2, {}}, {3, {}}};
  BlockId next_block = 100;
  for (Seq& s : seqs) {
    s.rows.resize(kRows);
    for (auto& row : s.rows) {
      for (int b = 0; b < 20; ++b) row.push_back(next_block++);
    }
  }
  auto make = [&](const std::vector<Seq>& in) {
    Batch b;
    b.num_layers = kLayers;
    b.num_kv_heads = kHeads;
    b.block_size = 16;
    b.kv_indptr = {0};
    for (const Seq& s : in) {
      SequenceStep step;
      step.id = s.id;
      step.tokens = {7};
      b.seqs.push_back(step);
      for (const auto& row : s.rows) {
        b.kv_indices.insert(b.kv_indices.end(), row.begin(), row.end());
        b.kv_indptr.push_back(static_cast<int32_t>(b.kv_indices.size()));
        b.kv_len_before.push_back(static_cast<int32_t>(row.size() * 16 - 3));
        b.kv_len_after.push_back(static_cast<int32_t>(row.size() * 16 - 2));
      }
    }
    return b;
  };
  BatchEncoder encoder;
  BatchDecoder decoder;
  std::vector<size_t> sizes;
  Seq away{};
  for (int step = 0; step < 8; ++step) {
    if (step == 2) seqs[0].rows[4].push_back(next_block++);  // a row grows
    if (step == 3) seqs[1].rows[0].back() = next_block++;    // copy-on-write of the last block
    if (step == 4) {                                         // sequence 3 steps away
      away = seqs[2];
      seqs.erase(seqs.begin() + 2);
    }
    if (step == 5) {  // a new sequence arrives
      Seq s{9, std::vector<std::vector<BlockId>>(kRows, std::vector<BlockId>{next_block++})};
      seqs.push_back(s);
    }
    if (step == 6) seqs.push_back(away);  // sequence 3 is back (its rows are sent whole)
    const Batch b = make(seqs);
    const std::vector<uint8_t> bytes = *encoder.Encode(b);
    sizes.push_back(bytes.size());
    auto d = decoder.Decode(bytes);
    ASSERT_TRUE(d.ok()) << "step " << step << ": " << d.status();
    ExpectSame(b, *d);
    // A decoder that missed earlier steps cannot use this one.
    if (step > 0) {
      BatchDecoder fresh;
      EXPECT_EQ(fresh.Decode(bytes).status().code(), absl::StatusCode::kDataLoss);
    }
  }
  // Step 1 repeats step 0's tables: none of the 3 x 6 rows' 20 blocks is sent again; step 7
  // repeats step 6 likewise (sequence 3's rows were sent whole at step 6).
  EXPECT_EQ(sizes[0] - sizes[1], 3u * kRows * 20 * sizeof(BlockId));
  EXPECT_EQ(sizes[6] - sizes[7], 1u * kRows * 20 * sizeof(BlockId));
}

}  // namespace
}  // namespace hkv
