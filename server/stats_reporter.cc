#include "server/stats_reporter.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "common/logging.h"

namespace hkv {
namespace {

// The engine-step counters of EngineMetrics at one moment.
struct StepTotals {
  int64_t steps = 0, prefill_steps = 0, tokens = 0, schedule_ns = 0, execute_ns = 0, update_ns = 0,
          deliver_ns = 0;
  static StepTotals Read(const EngineMetrics& m) {
    return {m.engine_steps_total.load(),       m.engine_prefill_steps_total.load(),
            m.engine_step_tokens_total.load(), m.engine_schedule_ns_total.load(),
            m.engine_execute_ns_total.load(),  m.engine_update_ns_total.load(),
            m.engine_deliver_ns_total.load()};
  }
};

}  // namespace

StatsReporter::StatsReporter(const EngineMetrics* metrics, absl::Duration interval)
    : metrics_(metrics), interval_(interval) {}

StatsReporter::~StatsReporter() { Stop(); }

void StatsReporter::Start() {
  if (interval_ <= absl::ZeroDuration() || thread_.joinable()) return;
  thread_ = std::thread([this] { Run(); });
}

void StatsReporter::Stop() {
  if (!thread_.joinable()) return;
  if (!stop_.HasBeenNotified()) stop_.Notify();
  thread_.join();
}

void StatsReporter::Run() {
  int64_t prompt = metrics_->prompt_tokens_total.load();
  int64_t generated = metrics_->generation_tokens_total.load();
  StepTotals steps = StepTotals::Read(*metrics_);
  absl::Time last = absl::Now();
  while (!stop_.WaitForNotificationWithTimeout(interval_)) {
    const absl::Time now = absl::Now();
    const double seconds = std::max(1e-9, absl::ToDoubleSeconds(now - last));
    const int64_t p = metrics_->prompt_tokens_total.load();
    const int64_t g = metrics_->generation_tokens_total.load();
    const int64_t total = metrics_->kv_blocks_total.load();
    const double used =
        total > 0 ? static_cast<double>(metrics_->kv_blocks_used.load()) / total : 0.0;
    const StepTotals now_steps = StepTotals::Read(*metrics_);
    const int64_t interval_steps = now_steps.steps - steps.steps;
    auto per_step = [&](int64_t v) {
      return interval_steps > 0 ? static_cast<double>(v) / interval_steps : 0.0;
    };
    HKV_LOG_EVENT(
        INFO, "stats",
        (std::vector<LogField>{
            {"running", absl::StrCat(metrics_->requests_running.load()), true},
            {"waiting", absl::StrCat(metrics_->requests_waiting.load()), true},
            {"kv_pool_used", absl::StrFormat("%.4f", used), true},
            {"prompt_tokens_per_s", absl::StrFormat("%.1f", (p - prompt) / seconds), true},
            {"generation_tokens_per_s", absl::StrFormat("%.1f", (g - generated) / seconds), true},
            {"finished", absl::StrCat(metrics_->requests_finished_total.load()), true},
            // The interval's steps, and where the engine loop's time went per step.
            {"steps", absl::StrCat(now_steps.steps - steps.steps), true},
            {"prefill_steps", absl::StrCat(now_steps.prefill_steps - steps.prefill_steps), true},
            {"tokens_per_step", absl::StrFormat("%.1f", per_step(now_steps.tokens - steps.tokens)),
             true},
            {"schedule_ms_per_step",
             absl::StrFormat("%.3f", per_step(now_steps.schedule_ns - steps.schedule_ns) * 1e-6),
             true},
            {"execute_ms_per_step",
             absl::StrFormat("%.3f", per_step(now_steps.execute_ns - steps.execute_ns) * 1e-6),
             true},
            {"update_ms_per_step",
             absl::StrFormat("%.3f", per_step(now_steps.update_ns - steps.update_ns) * 1e-6), true},
            {"deliver_ms_per_step",
             absl::StrFormat("%.3f", per_step(now_steps.deliver_ns - steps.deliver_ns) * 1e-6),
             true}}));
    steps = now_steps;
    prompt = p;
    generated = g;
    last = now;
  }
}

}  // namespace hkv
