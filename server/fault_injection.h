#pragma once
// Fault injection for tests and game days: HKV_FAULT_WORKER_FAIL_AFTER_STEPS=N wraps the worker
// so that every step after the N-th fails with UNAVAILABLE, as a lost GPU or a dead
// tensor-parallel rank would. Read once at start (BuildEngine); unset in production.
//
// Thread-compatible, like the worker it wraps.

#include <memory>

#include "workers/worker.h"

namespace hkv {

// Returns `worker` itself, or wrapped when the variable is set to a number >= 0.
std::unique_ptr<Worker> MaybeInjectWorkerFaults(std::unique_ptr<Worker> worker);

}  // namespace hkv
