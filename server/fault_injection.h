#pragma once
// Fault injection for tests and game days, read once at start (BuildEngine); unset in
// production:
//   HKV_FAULT_WORKER_FAIL_AFTER_STEPS=N wraps the worker so that every step after the N-th fails
//     with UNAVAILABLE, as a lost GPU or a dead tensor-parallel rank would;
//   HKV_FAULT_ENGINE_STALL_MS=MS makes the engine loop sleep MS milliseconds once, after its
//     first step and outside Worker::Execute, as slow output processing would (the probes'
//     watchdog must see it).
//
// Thread-compatible, like the worker it wraps.

#include <memory>

#include "absl/time/time.h"
#include "workers/worker.h"

namespace hkv {

// Returns `worker` itself, or wrapped when the variable is set to a number >= 0.
std::unique_ptr<Worker> MaybeInjectWorkerFaults(std::unique_ptr<Worker> worker);

// The engine loop stall HKV_FAULT_ENGINE_STALL_MS asks for (zero when unset or not a number > 0),
// for EngineOptions::fault_loop_stall.
absl::Duration EngineLoopStallFromEnv();

}  // namespace hkv
