#include "workers/pending_tokens.h"

namespace hkv {

bool HasPendingTokens(const Batch& batch) {
  for (const SequenceStep& s : batch.seqs) {
    for (TokenId t : s.tokens) {
      if (t == kPendingToken) return true;
    }
  }
  return false;
}

void PendingTokens::Record(const Batch& batch, const BatchResult& result) {
  last_.clear();
  for (size_t i = 0; i < batch.seqs.size() && i < result.seqs.size(); ++i) {
    if (batch.seqs[i].sample && result.seqs[i].token >= 0) {
      last_[batch.seqs[i].id] = result.seqs[i].token;
    }
  }
}

absl::Status PendingTokens::Resolve(Batch* batch) const {
  if (absl::Status valid = ValidatePendingTokens(*batch, last_); !valid.ok()) return valid;
  for (SequenceStep& s : batch->seqs) {
    if (s.tokens.size() == 1 && s.tokens[0] == kPendingToken) s.tokens[0] = last_.at(s.id);
  }
  return absl::OkStatus();
}

}  // namespace hkv
