#pragma once
// TenantLimiter: caps the requests one tenant (one API key's owner) has in flight, queued and
// running together, so that one tenant cannot fill the server's queue. A request holds a Slot
// from its admission by the front end to its end; past the cap the tenant's next request is
// refused with RESOURCE_EXHAUSTED, while other tenants are unaffected.
//
// Thread-safe: any thread may acquire and release slots. Memory is bounded by the number of
// tenants with a request in flight (entries are dropped when their count returns to zero).

#include <optional>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"

namespace hkv {

class TenantLimiter {
 public:
  class Slot {
   public:
    Slot(TenantLimiter* owner, std::string tenant) : owner_(owner), tenant_(std::move(tenant)) {}
    Slot(Slot&& other) noexcept : owner_(other.owner_), tenant_(std::move(other.tenant_)) {
      other.owner_ = nullptr;
    }
    Slot& operator=(Slot&&) = delete;
    Slot(const Slot&) = delete;
    Slot& operator=(const Slot&) = delete;
    ~Slot();

   private:
    TenantLimiter* owner_;
    std::string tenant_;
  };

  // `limit` 0 means no cap.
  explicit TenantLimiter(int limit = 0) : limit_(limit) {}

  // Takes a place for `tenant`, or RESOURCE_EXHAUSTED when it already has `limit` in flight.
  absl::StatusOr<Slot> Acquire(const std::string& tenant);
  // Returns how many requests `tenant` has in flight.
  int in_flight(const std::string& tenant) const;
  int limit() const { return limit_; }

 private:
  void Release(const std::string& tenant);

  const int limit_;
  mutable absl::Mutex mu_;
  absl::flat_hash_map<std::string, int> in_flight_ ABSL_GUARDED_BY(mu_);
};

}  // namespace hkv
