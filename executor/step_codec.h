#pragma once
// Byte encoding of one engine step (common/batch.h) and of a rank's answer, for tensor-parallel
// ranks in other processes (executor/multi_node_worker.h).
//
// Format: fixed-width little-endian integers and IEEE floats; every vector is a uint64 length
// followed by its elements. Page tables are sent as changes against the previous step
// (BatchEncoder below). The format is private to one hkv build: the step channel's hello
// compares versions (bumped with the format) before any step is sent. Decoding checks every length
// against the bytes left, so a truncated or corrupt message is DATA_LOSS, never a crash or a
// huge allocation.

#include <cstdint>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "common/batch.h"

namespace hkv {

// A sequence's page-table rows as last sent: CSR over its (layer, KV head) rows.
struct SeqRows {
  std::vector<int64_t> indptr;
  std::vector<BlockId> blocks;
};

// Page tables are most of a step's bytes (every (layer, KV head) row of every sequence), and
// from one step to the next a row only grows by a block now and then. The encoder therefore
// sends, per row, how many leading blocks equal that row's in the same sequence's previous step,
// and only the rest. An encoder and its decoder must see the same steps in the same order (one
// connection); a decoder that did not see a step the encoder refers to fails with DATA_LOSS.
// Thread-compatible.
class BatchEncoder {
 public:
  // INVALID_ARGUMENT when the batch's page table does not fit its shape (then nothing is
  // remembered).
  absl::StatusOr<std::vector<uint8_t>> Encode(const Batch& batch);

 private:
  absl::flat_hash_map<RequestId, SeqRows> previous_;  // sequences of the last step
};

class BatchDecoder {
 public:
  absl::StatusOr<Batch> Decode(absl::Span<const uint8_t> bytes);

 private:
  absl::flat_hash_map<RequestId, SeqRows> previous_;
};

// One step on its own (nothing reused).
absl::StatusOr<std::vector<uint8_t>> EncodeBatch(const Batch& batch);
absl::StatusOr<Batch> DecodeBatch(absl::Span<const uint8_t> bytes);

// Tokens and kept counts; logits only when the rank was asked to keep them.
std::vector<uint8_t> EncodeBatchResult(const BatchResult& result);
absl::StatusOr<BatchResult> DecodeBatchResult(absl::Span<const uint8_t> bytes);

// The setup messages of a multi-node group: kSetup carries the NCCL id and head placement,
// kReady and kStart the blocks per rank.
struct GroupSetup {
  std::vector<uint8_t> nccl_id;
  std::vector<int32_t> head_of_slot;
  int64_t blocks_per_rank = 0;
};
std::vector<uint8_t> EncodeGroupSetup(const GroupSetup& setup);
absl::StatusOr<GroupSetup> DecodeGroupSetup(absl::Span<const uint8_t> bytes);

}  // namespace hkv
