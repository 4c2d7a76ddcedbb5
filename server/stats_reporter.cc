#include "server/stats_reporter.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "common/logging.h"

namespace hkv {

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
  absl::Time last = absl::Now();
  while (!stop_.WaitForNotificationWithTimeout(interval_)) {
    const absl::Time now = absl::Now();
    const double seconds = std::max(1e-9, absl::ToDoubleSeconds(now - last));
    const int64_t p = metrics_->prompt_tokens_total.load();
    const int64_t g = metrics_->generation_tokens_total.load();
    const int64_t total = metrics_->kv_blocks_total.load();
    const double used =
        total > 0 ? static_cast<double>(metrics_->kv_blocks_used.load()) / total : 0.0;
    HKV_LOG_EVENT(
        INFO, "stats",
        (std::vector<LogField>{
            {"running", absl::StrCat(metrics_->requests_running.load()), true},
            {"waiting", absl::StrCat(metrics_->requests_waiting.load()), true},
            {"kv_pool_used", absl::StrFormat("%.4f", used), true},
            {"prompt_tokens_per_s", absl::StrFormat("%.1f", (p - prompt) / seconds), true},
            {"generation_tokens_per_s", absl::StrFormat("%.1f", (g - generated) / seconds), true},
            {"finished", absl::StrCat(metrics_->requests_finished_total.load()), true}}));
    prompt = p;
    generated = g;
    last = now;
  }
}

}  // namespace hkv
