#include "server/fault_injection.h"

#include <cstdlib>
#include <iostream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace hkv {
namespace {

class FailAfterStepsWorker : public Worker {
 public:
  FailAfterStepsWorker(std::unique_ptr<Worker> inner, int64_t steps)
      : inner_(std::move(inner)), steps_left_(steps) {}
  const ModelConfig& config() const override { return inner_->config(); }
  std::string name() const override { return inner_->name(); }
  bool SupportsAdaptiveSelection() const override { return inner_->SupportsAdaptiveSelection(); }
  bool AcceptsPageTableDeltas() const override { return inner_->AcceptsPageTableDeltas(); }
  absl::Status Liveness() override { return inner_->Liveness(); }
  absl::StatusOr<BatchResult> Execute(const Batch& batch) override {
    if (steps_left_-- <= 0) {
      return absl::UnavailableError("injected device failure (HKV_FAULT_WORKER_FAIL_AFTER_STEPS)");
    }
    return inner_->Execute(batch);
  }

 private:
  std::unique_ptr<Worker> inner_;
  int64_t steps_left_;
};

}  // namespace

std::unique_ptr<Worker> MaybeInjectWorkerFaults(std::unique_ptr<Worker> worker) {
  const char* value = std::getenv("HKV_FAULT_WORKER_FAIL_AFTER_STEPS");
  int64_t steps = 0;
  if (value == nullptr || !absl::SimpleAtoi(value, &steps) || steps < 0) return worker;
  std::cerr << "fault injection: the worker fails after " << steps << " steps\n";
  return std::make_unique<FailAfterStepsWorker>(std::move(worker), steps);
}

absl::Duration EngineLoopStallFromEnv() {
  const char* value = std::getenv("HKV_FAULT_ENGINE_STALL_MS");
  int64_t ms = 0;
  if (value == nullptr || !absl::SimpleAtoi(value, &ms) || ms <= 0) return absl::ZeroDuration();
  std::cerr << "fault injection: the engine loop stalls for " << ms << " ms after its first step\n";
  return absl::Milliseconds(ms);
}

}  // namespace hkv
