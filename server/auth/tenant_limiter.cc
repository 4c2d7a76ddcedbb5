#include "server/auth/tenant_limiter.h"

#include "absl/strings/str_cat.h"

namespace hkv {

TenantLimiter::Slot::~Slot() {
  if (owner_ != nullptr) owner_->Release(tenant_);
}

absl::StatusOr<TenantLimiter::Slot> TenantLimiter::Acquire(const std::string& tenant) {
  absl::MutexLock lock(&mu_);
  int& n = in_flight_[tenant];
  if (limit_ > 0 && n >= limit_) {
    return absl::ResourceExhaustedError(
        absl::StrCat("this API key's tenant already has ", n,
                     " requests queued or running, the most allowed (--max-requests-per-key): "
                     "wait for one to finish"));
  }
  ++n;
  return Slot(this, tenant);
}

int TenantLimiter::in_flight(const std::string& tenant) const {
  absl::MutexLock lock(&mu_);
  auto it = in_flight_.find(tenant);
  return it == in_flight_.end() ? 0 : it->second;
}

void TenantLimiter::Release(const std::string& tenant) {
  absl::MutexLock lock(&mu_);
  auto it = in_flight_.find(tenant);
  if (it == in_flight_.end()) return;
  if (--it->second <= 0) in_flight_.erase(it);
}

}  // namespace hkv
