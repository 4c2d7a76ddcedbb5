#pragma once
// PendingTokens: what a worker running async steps needs to resolve kPendingToken inputs
// (common/batch.h): the tokens the step launched last sampled, by sequence.
//
// A step launched while the previous one runs may carry kPendingToken as the sole token of a
// one-token step; it stands for the token the previous step sampled for that sequence (sample
// 0). Workers that sample on the host (the CPU worker) substitute it from Record()'s map; the
// CUDA worker gathers it on the device from the previous step's sampled rows.
//
// Thread-compatible: the worker's thread.

#include <cstdint>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "common/batch.h"

namespace hkv {

// Returns whether any input token of `batch` is kPendingToken.
bool HasPendingTokens(const Batch& batch);
// INVALID_ARGUMENT unless every kPendingToken of `batch` is the sole token of a one-token step
// of a sequence whose previous step sampled (`sampled_last`: its id has a row there).
template <typename Map>
absl::Status ValidatePendingTokens(const Batch& batch, const Map& sampled_last);

class PendingTokens {
 public:
  // Replaces the map with the tokens `result` sampled for `batch` (sample 0 of each sampling
  // step). A failed step leaves the map empty: nothing may refer to it.
  void Record(const Batch& batch, const BatchResult& result);
  void Clear() { last_.clear(); }
  // Replaces each kPendingToken of `batch` with the recorded token of its sequence;
  // INVALID_ARGUMENT (nothing changed) when one has none or is not a one-token step's.
  absl::Status Resolve(Batch* batch) const;

 private:
  absl::flat_hash_map<RequestId, TokenId> last_;
};

template <typename Map>
absl::Status ValidatePendingTokens(const Batch& batch, const Map& sampled_last) {
  for (const SequenceStep& s : batch.seqs) {
    for (TokenId t : s.tokens) {
      if (t != kPendingToken) continue;
      if (s.tokens.size() != 1) {
        return absl::InvalidArgumentError("a pending token in a step of more than one token");
      }
      if (!sampled_last.contains(s.id)) {
        return absl::InvalidArgumentError(
            "a pending token of a sequence the previous step did not sample");
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace hkv
