#include "headkv/kv_policy.h"

#include <cmath>

#include "absl/strings/str_cat.h"
#include "common/quote.h"

namespace hkv {

absl::StatusOr<KvPolicyName> ParsePolicyName(std::string_view name) {
  for (KvPolicyName p : {KvPolicyName::kFull, KvPolicyName::kSnapKv, KvPolicyName::kPyramidKv,
                         KvPolicyName::kAdaKv, KvPolicyName::kHeadKv}) {
    if (name == PolicyNameString(p)) return p;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown KV policy ", QuoteForError(name),
                   " (expected full, snapkv, pyramidkv, adakv or headkv)"));
}

std::string_view PolicyNameString(KvPolicyName name) {
  switch (name) {
    case KvPolicyName::kFull:
      return "full";
    case KvPolicyName::kSnapKv:
      return "snapkv";
    case KvPolicyName::kPyramidKv:
      return "pyramidkv";
    case KvPolicyName::kAdaKv:
      return "adakv";
    case KvPolicyName::kHeadKv:
      return "headkv";
  }
  return "unknown";
}

absl::StatusOr<Granularity> ParseGranularity(std::string_view name) {
  if (name == "query_head") return Granularity::kQueryHead;
  if (name == "kv_head") return Granularity::kKvHead;
  return absl::InvalidArgumentError(absl::StrCat("unknown granularity ", QuoteForError(name),
                                                 " (expected query_head or kv_head)"));
}

std::string_view GranularityString(Granularity granularity) {
  return granularity == Granularity::kQueryHead ? "query_head" : "kv_head";
}

bool Compresses(KvPolicyName name) { return name != KvPolicyName::kFull; }

absl::Status ValidatePolicy(const KvPolicy& policy) {
  const std::string name(PolicyNameString(policy.name));
  if (policy.window < 1) {
    return absl::InvalidArgumentError(absl::StrCat("KV window must be >= 1, got ", policy.window));
  }
  if (policy.pool_kernel < 1 || policy.pool_kernel % 2 == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("KV pool kernel must be odd and >= 1, got ", policy.pool_kernel));
  }
  if (!Compresses(policy.name)) return absl::OkStatus();
  if (policy.budget < policy.window + 1) {
    return absl::InvalidArgumentError(absl::StrCat("KV budget for ", name, " must be >= window + 1 = ",
                                                   policy.window + 1, ", got ", policy.budget));
  }
  if (policy.name == KvPolicyName::kAdaKv &&
      !(policy.ada_alpha >= 0.0f && policy.ada_alpha <= 1.0f)) {
    return absl::InvalidArgumentError(
        absl::StrCat("adakv floor fraction alpha must be in [0, 1], got ", policy.ada_alpha));
  }
  if (policy.name == KvPolicyName::kHeadKv) {
    if (!(policy.beta > 1.0) || !std::isfinite(policy.beta)) {
      return absl::InvalidArgumentError(
          absl::StrCat("headkv beta must be a finite number > 1, got ", policy.beta));
    }
    if (policy.scores == nullptr) {
      return absl::InvalidArgumentError("headkv policy needs a head score file (--head-scores)");
    }
  }
  return absl::OkStatus();
}

}  // namespace hkv
