#include "workers/cuda/sampling_extras.h"

#include <algorithm>

#include "absl/container/flat_hash_set.h"

namespace hkv {
namespace {

// Appends one sampled row's penalty entries; returns whether it penalises or bans anything.
bool AppendRow(const StepSampling& p, const TokenHistory& hist, int32_t vocab, SamplingExtras* x) {
  HostPenaltyRow row{p.presence_penalty, p.frequency_penalty, p.repetition_penalty, 0};
  const bool penalise =
      p.presence_penalty != 0.0f || p.frequency_penalty != 0.0f || p.repetition_penalty != 1.0f;
  if (penalise) {
    for (TokenId t : hist.seen) {
      if (t < 0 || t >= vocab) continue;
      auto it = hist.output_counts.find(t);
      x->ids.push_back(t);
      x->counts.push_back(it == hist.output_counts.end() ? 0 : it->second);
    }
  }
  if (hist.num_generated < p.min_tokens && !hist.min_tokens_banned.empty()) {
    absl::flat_hash_set<TokenId> banned;
    for (TokenId t : hist.min_tokens_banned) {
      if (t >= 0 && t < vocab) banned.insert(t);
    }
    // As ApplyPenalties: banning every token would leave nothing to sample.
    if (static_cast<int64_t>(banned.size()) < vocab) {
      row.ban = 1;
      for (TokenId t : banned) {
        x->ids.push_back(t);
        x->counts.push_back(-1);
      }
    }
  }
  x->params.push_back(row);
  return penalise || row.ban;
}

}  // namespace

bool NeedsSamplingExtras(const SequenceStep& step) {
  return step.sample && (step.sampling.uses_history() || step.sampling.logprobs >= 0);
}

SamplingExtras BuildSamplingExtras(const Batch& b, const HostStep& h,
                                   const TokenHistories& histories, int32_t vocab_size) {
  SamplingExtras x;
  x.indptr.push_back(0);
  for (size_t r = 0; r < h.sample_rows.size(); ++r) {
    const int32_t seq = h.sample_seq[r];
    const SequenceStep* st = seq >= 0 ? &b.seqs[h.order[seq]] : nullptr;
    const TokenHistory* hist =
        st != nullptr && st->sampling.uses_history() ? histories.Find(st->id) : nullptr;
    if (hist != nullptr) {
      x.penalties |= AppendRow(st->sampling, *hist, vocab_size, &x);
    } else {
      x.params.push_back(HostPenaltyRow{});
    }
    x.indptr.push_back(static_cast<int32_t>(x.ids.size()));
    if (st != nullptr && st->sample) x.top = std::max(x.top, st->sampling.logprobs);
  }
  return x;
}

}  // namespace hkv
