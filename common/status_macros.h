#pragma once
// Status propagation macros. Debian 12's Abseil (20220623) has no status_macros.h, so hkv
// carries its own. Thread-safe (pure macros).

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define HKV_STATUS_CONCAT_INNER_(a, b) a##b
#define HKV_STATUS_CONCAT_(a, b) HKV_STATUS_CONCAT_INNER_(a, b)

// Returns from the current function with `expr`'s status when it is not OK.
#define HKV_RETURN_IF_ERROR(expr)                        \
  do {                                                   \
    ::absl::Status hkv_status_ = (expr);                 \
    if (!hkv_status_.ok()) return hkv_status_;           \
  } while (0)

// `HKV_ASSIGN_OR_RETURN(auto x, F());` evaluates F() (a StatusOr<T>), returns its status on
// error, else moves the value into `x`.
#define HKV_ASSIGN_OR_RETURN(lhs, expr) \
  HKV_ASSIGN_OR_RETURN_IMPL_(HKV_STATUS_CONCAT_(hkv_statusor_, __LINE__), lhs, expr)

#define HKV_ASSIGN_OR_RETURN_IMPL_(var, lhs, expr) \
  auto var = (expr);                               \
  if (!var.ok()) return std::move(var).status();   \
  lhs = std::move(var).value()
