#pragma once
// CallLimiter: counts the calls in flight against a fixed limit, so that the (limit + 1)-th
// concurrent call is refused exactly, whatever the thread pool under it does. A call holds a
// Slot from its start to its end; the Slot gives its place back when destroyed.
//
// Thread-safe: any thread may acquire and release slots.

#include <atomic>
#include <optional>

namespace hkv {

class CallLimiter {
 public:
  class Slot {
   public:
    explicit Slot(std::atomic<int>* in_flight) : in_flight_(in_flight) {}
    Slot(Slot&& other) noexcept : in_flight_(other.in_flight_) { other.in_flight_ = nullptr; }
    Slot& operator=(Slot&&) = delete;
    Slot(const Slot&) = delete;
    Slot& operator=(const Slot&) = delete;
    ~Slot() {
      if (in_flight_ != nullptr) in_flight_->fetch_sub(1);
    }

   private:
    std::atomic<int>* in_flight_;
  };

  explicit CallLimiter(int limit) : limit_(limit) {}

  // Takes a place, or returns nullopt when `limit` calls are already in flight.
  std::optional<Slot> TryAcquire() {
    int n = in_flight_.load();
    do {
      if (n >= limit_.load()) return std::nullopt;
    } while (!in_flight_.compare_exchange_weak(n, n + 1));
    return Slot(&in_flight_);
  }
  // REQUIRES: limit >= 1. Calls already in flight keep their places.
  void set_limit(int limit) { limit_ = limit; }
  int limit() const { return limit_.load(); }
  int in_flight() const { return in_flight_.load(); }

 private:
  std::atomic<int> limit_;
  std::atomic<int> in_flight_{0};
};

}  // namespace hkv
