#pragma once
// KV cache policies: which tokens each head keeps after prefill, and their parameters.
//
//   full       every head keeps every token
//   snapkv     every head keeps B tokens (B - w selected + w window)
//   pyramidkv  per-layer budgets falling linearly from the first to the last layer
//   adakv      a layer's H*(B-w) tokens split across its heads by their window scores
//   headkv     a global pool split across all (layer, head) by published importance scores
//
// Thread-safe: plain data; the shared HeadScores are immutable.

#include <cstdint>
#include <memory>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "headkv/head_scores.h"

namespace hkv {

enum class KvPolicyName { kFull, kSnapKv, kPyramidKv, kAdaKv, kHeadKv };

// kQueryHead plans one cap per query head (the HeadKV paper); kKvHead sums each GQA group's
// scores and plans per KV head (hkv's serving default: the cache is Hq/Hkv times smaller).
enum class Granularity { kQueryHead, kKvHead };

struct KvPolicy {
  KvPolicyName name = KvPolicyName::kFull;
  int32_t budget = 0;      // B: tokens kept per head on average, window included.
  double beta = 1.01;      // headkv: share of b = B - w that is pooled globally is ~1/beta.
  int32_t window = 8;      // w: last prompt tokens every head keeps.
  int32_t pool_kernel = 7; // Max-pool kernel over window scores (odd).
  float ada_alpha = 0.2f;  // adakv: floor fraction of the per-head average.
  Granularity granularity = Granularity::kKvHead;
  std::shared_ptr<const HeadScores> scores;  // headkv only: query-head scores.
};

// Parses "full", "snapkv", "pyramidkv", "adakv" or "headkv" (INVALID_ARGUMENT otherwise).
absl::StatusOr<KvPolicyName> ParsePolicyName(std::string_view name);
// Returns the policy's name as ParsePolicyName accepts it.
std::string_view PolicyNameString(KvPolicyName name);
// Parses "query_head" or "kv_head".
absl::StatusOr<Granularity> ParseGranularity(std::string_view name);
std::string_view GranularityString(Granularity granularity);

// True for every policy but full.
bool Compresses(KvPolicyName name);

// INVALID_ARGUMENT naming the bad field: window < 1, even or non-positive pool_kernel, and for
// compressing policies budget < window + 1, beta <= 1 (headkv), alpha outside [0, 1] (adakv),
// headkv without scores.
absl::Status ValidatePolicy(const KvPolicy& policy);

}  // namespace hkv
