#pragma once
// Byte encoding of one engine step (common/batch.h) and of a rank's answer, for tensor-parallel
// ranks in other processes (workers/multi_node_worker.h).
//
// Format: fixed-width little-endian integers and IEEE floats; every vector is a uint64 length
// followed by its elements; strings likewise. The format is private to one hkv build: the step
// channel's hello compares versions before any step is sent. Decoding checks every length
// against the bytes left, so a truncated or corrupt message is DATA_LOSS, never a crash or a
// huge allocation.

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "common/batch.h"

namespace hkv {

std::vector<uint8_t> EncodeBatch(const Batch& batch);
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
