#pragma once
// PlanCache: a small least-recently-used cache of budget plans keyed by (policy, budget, beta).
// Clients choose the key, so the cache is bounded: past `capacity` entries the least recently
// used plan is dropped (and recomputed if asked for again; planning is a pure function).
//
// Thread-safe: gRPC handler threads look up and insert concurrently; one mutex guards all.

#include <cstddef>
#include <cstdint>
#include <list>
#include <optional>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "headkv/head_budget_planner.h"
#include "headkv/kv_policy.h"

namespace hkv {

// What a plan depends on, normalised by the caller (e.g. budget and beta 0 where the policy
// ignores them) so that equal plans share one entry.
struct PlanKey {
  KvPolicyName policy = KvPolicyName::kFull;
  int32_t budget = 0;
  double beta = 0;

  bool operator==(const PlanKey& o) const {
    return policy == o.policy && budget == o.budget && beta == o.beta;
  }
  template <typename H>
  friend H AbslHashValue(H h, const PlanKey& k) {
    return H::combine(std::move(h), k.policy, k.budget, k.beta);
  }
};

class PlanCache {
 public:
  static constexpr size_t kDefaultCapacity = 64;

  // REQUIRES: capacity >= 1.
  explicit PlanCache(size_t capacity = kDefaultCapacity);

  // Returns a copy of the plan for `key` and marks it most recently used; nullopt if absent.
  std::optional<HeadBudgetPlan> Lookup(const PlanKey& key);
  // Stores `plan` for `key` as most recently used (replacing an entry with the same key),
  // dropping the least recently used entry past capacity.
  void Insert(const PlanKey& key, HeadBudgetPlan plan);
  // Returns the number of cached plans (at most capacity()).
  size_t size() const;
  size_t capacity() const { return capacity_; }

 private:
  using Entry = std::pair<PlanKey, HeadBudgetPlan>;

  const size_t capacity_;
  mutable absl::Mutex mu_;
  std::list<Entry> lru_ ABSL_GUARDED_BY(mu_);  // Front: most recently used.
  absl::flat_hash_map<PlanKey, std::list<Entry>::iterator> index_ ABSL_GUARDED_BY(mu_);
};

}  // namespace hkv
