#include "server/plan_cache.h"

#include "common/logging.h"

namespace hkv {

PlanCache::PlanCache(size_t capacity) : capacity_(capacity) {
  HKV_CHECK(capacity_ >= 1) << "a plan cache needs room for one plan";
}

std::optional<HeadBudgetPlan> PlanCache::Lookup(const PlanKey& key) {
  absl::MutexLock lock(&mu_);
  auto it = index_.find(key);
  if (it == index_.end()) return std::nullopt;
  lru_.splice(lru_.begin(), lru_, it->second);
  return it->second->second;
}

void PlanCache::Insert(const PlanKey& key, HeadBudgetPlan plan) {
  absl::MutexLock lock(&mu_);
  auto it = index_.find(key);
  if (it != index_.end()) {
    // Two threads missed the same key and both planned: keep one, most recent.
    it->second->second = std::move(plan);
    lru_.splice(lru_.begin(), lru_, it->second);
    return;
  }
  lru_.emplace_front(key, std::move(plan));
  index_.emplace(key, lru_.begin());
  if (lru_.size() > capacity_) {
    index_.erase(lru_.back().first);
    lru_.pop_back();
  }
}

size_t PlanCache::size() const {
  absl::MutexLock lock(&mu_);
  return lru_.size();
}

}  // namespace hkv
