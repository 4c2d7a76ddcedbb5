#include "workers/token_history.h"

#include "absl/strings/str_cat.h"

namespace hkv {

void TokenHistories::Observe(const Batch& batch) {
  for (const auto& [parent, child] : batch.forks) {
    auto it = histories_.find(parent);
    if (it != histories_.end()) {
      TokenHistory copy = it->second;
      histories_.insert_or_assign(child, std::move(copy));
    }
  }
  for (RequestId id : batch.released) histories_.erase(id);
  for (const SequenceStep& s : batch.seqs) {
    if (!s.sampling.uses_history()) continue;
    if (s.start_pos == 0) {
      TokenHistory& h = histories_[s.id];
      h = TokenHistory{};
      h.num_prompt_tokens = s.num_prompt_tokens;
      h.min_tokens_banned = s.min_tokens_banned;
    }
    auto it = histories_.find(s.id);
    if (it == histories_.end()) continue;  // CheckFor() reports it if the step samples.
    TokenHistory& h = it->second;
    for (size_t i = 0; i < s.tokens.size(); ++i) {
      const TokenId t = s.tokens[i];
      h.seen.insert(t);
      if (s.start_pos + static_cast<int64_t>(i) >= h.num_prompt_tokens) {
        ++h.output_counts[t];
        ++h.num_generated;
      }
    }
  }
}

const TokenHistory* TokenHistories::Find(RequestId id) const {
  auto it = histories_.find(id);
  return it == histories_.end() ? nullptr : &it->second;
}

absl::Status TokenHistories::CheckFor(const SequenceStep& step) const {
  if (!step.sample || !step.sampling.uses_history()) return absl::OkStatus();
  const TokenHistory* h = Find(step.id);
  if (h == nullptr) {
    return absl::InternalError(absl::StrCat("sequence ", step.id,
                                            " samples with penalties but its history is unknown "
                                            "(its first step never reached this worker)"));
  }
  if (h->num_generated != step.sample_step) {
    return absl::InternalError(absl::StrCat("sequence ", step.id, " samples token ",
                                            step.sample_step, " but its history holds ",
                                            h->num_generated, " generated tokens"));
  }
  return absl::OkStatus();
}

}  // namespace hkv
