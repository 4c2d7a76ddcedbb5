#pragma once
// StatsReporter: logs one line every interval with what the engine is doing, read from its
// metrics (so it never touches the engine thread):
//
//   I1201 17:40:10.000 stats_reporter.cc:40] stats running=3 waiting=0 kv_pool_used=0.125
//     prompt_tokens_per_s=120.0 generation_tokens_per_s=5321.4 finished=17
//
// Threading: one thread of its own between Start and Stop (or destruction).

#include <thread>

#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "server/metrics.h"

namespace hkv {

class StatsReporter {
 public:
  // `metrics` must outlive the reporter.
  StatsReporter(const EngineMetrics* metrics, absl::Duration interval);
  ~StatsReporter();

  // Starts the thread; a zero interval starts nothing.
  void Start();
  void Stop();

 private:
  void Run();

  const EngineMetrics* metrics_;
  const absl::Duration interval_;
  absl::Notification stop_;
  std::thread thread_;
};

}  // namespace hkv
