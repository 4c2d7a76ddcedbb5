#pragma once
// Prometheus text-format metrics: counters, gauges and histograms with fixed buckets, and the
// HTTP endpoint that serves them. Thread-safe: every method may be called from any thread.

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "common/finish_reason.h"

namespace hkv {

class HttpGetServer;
class TlsContextSource;

class Histogram {
 public:
  explicit Histogram(std::vector<double> bounds);
  void Observe(double value);
  // Appends `name_bucket{le=..}`, `name_sum`, `name_count` lines; `labels` (already rendered,
  // e.g. `model_name="x"`, may be empty) go on every line.
  void Render(const std::string& name, std::string* out, const std::string& labels = "") const;

 private:
  const std::vector<double> bounds_;
  mutable absl::Mutex mu_;
  std::vector<uint64_t> counts_ ABSL_GUARDED_BY(mu_);  // [bounds + 1] (last: +Inf)
  double sum_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t count_ ABSL_GUARDED_BY(mu_) = 0;
};

// Every metric hkv exports. Names follow Prometheus conventions (units in the name). Besides
// hkv_*, the same values under vLLM's names (vllm:*, with a model_name label) so that
// dashboards, autoscalers and the Gateway API Inference Extension built for vLLM read hkv.
struct EngineMetrics {
  std::atomic<int64_t> requests_running{0};
  std::atomic<int64_t> requests_waiting{0};
  std::atomic<int64_t> kv_blocks_used{0};
  std::atomic<int64_t> kv_blocks_total{0};
  std::atomic<int64_t> kv_blocks_used_peak{0};  // Most in use at once (after a step) since start.
  std::atomic<int64_t> preemptions_total{0};
  std::atomic<int64_t> prompt_tokens_total{0};
  std::atomic<int64_t> generation_tokens_total{0};
  std::atomic<int64_t> requests_finished_total{0};
  std::atomic<int64_t> requests_failed_total{0};
  std::atomic<int64_t> requests_rejected_total{0};
  std::atomic<int64_t> kv_bytes_kept_total{0};
  std::atomic<int64_t> kv_bytes_full_total{0};
  std::atomic<int64_t> engine_steps_total{0};
  // Where the engine loop's time goes, summed over its steps (written by the engine thread
  // only): building the step (scheduling, page-table export), running it on the worker (the
  // device step, and the host layout the worker does), and applying its results.
  std::atomic<int64_t> engine_schedule_ns_total{0};
  std::atomic<int64_t> engine_execute_ns_total{0};
  std::atomic<int64_t> engine_update_ns_total{0};
  std::atomic<int64_t> engine_deliver_ns_total{0};     // stepped outputs pushed to the streams
  std::atomic<int64_t> engine_step_tokens_total{0};    // tokens run, prefill and decode
  std::atomic<int64_t> engine_prefill_steps_total{0};  // steps with a prompt chunk in them
  // Async scheduling: steps launched while the one before them ran (ScheduleAhead).
  std::atomic<int64_t> engine_ahead_steps_total{0};
  // Calls refused for a missing or wrong API key (before any engine work).
  std::atomic<int64_t> requests_unauthenticated_total{0};
  // Finished requests by vLLM's finished_reason: stop (a stop string, stop token or EOS),
  // length, abort (aborted, cancelled or past the deadline), error.
  std::atomic<int64_t> finished_stop_total{0};
  std::atomic<int64_t> finished_length_total{0};
  std::atomic<int64_t> finished_abort_total{0};
  std::atomic<int64_t> finished_error_total{0};
  std::atomic<int> ready{0};
  // TTFT, e2e and queue time reach 10 minutes: long-context prefills under load take minutes.
  Histogram time_to_first_token_s{
      {0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160, 320, 600}};
  Histogram inter_token_latency_s{{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1}};
  Histogram e2e_latency_s{{0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 240, 480, 600}};
  Histogram queue_time_s{{0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 60, 120, 300, 600}};

  // Counts one finished request under its vLLM finished_reason.
  void CountFinish(FinishReason reason);
  // Sets the model_name label of the vllm:* metrics and the labels of vllm:cache_config_info
  // (name, value pairs; values are escaped when rendered). Call before serving.
  void SetModelInfo(std::string model_name,
                    std::vector<std::pair<std::string, std::string>> cache_config);

  // The whole exposition, Prometheus text format 0.0.4.
  std::string Render() const;
  // Head-blocks in use per layer (hkv_kv_blocks_used_by_layer{layer="l"}).
  void SetBlocksPerLayer(std::vector<int64_t> blocks);
  std::vector<int64_t> BlocksPerLayer() const;

 private:
  void RenderVllm(std::string* out) const;

  mutable absl::Mutex mu_;
  std::vector<int64_t> blocks_per_layer_ ABSL_GUARDED_BY(mu_);
  std::string model_name_ ABSL_GUARDED_BY(mu_);
  std::vector<std::pair<std::string, std::string>> cache_config_ ABSL_GUARDED_BY(mu_);
};

// Serves GET /metrics and /healthz (200 when ready, else 503) on a background thread, with the
// bounds of HttpGetServer: slow or idle clients cannot delay a scrape.
class MetricsServer {
 public:
  explicit MetricsServer(const EngineMetrics* metrics);
  ~MetricsServer();
  // Serves HTTPS with contexts from `tls` (must outlive the server). Call before Start.
  void UseTls(TlsContextSource* tls);
  // Binds host:port (port 0 picks a free one, see port()) and starts serving. UNAVAILABLE when
  // the port is in use or the host is not a local address.
  absl::Status Start(const std::string& host, int port);
  void Stop();
  int port() const { return port_; }
  // HTTP connections open right now.
  int open_connections() const;

 private:
  std::unique_ptr<HttpGetServer> http_;
  int port_ = 0;
};

}  // namespace hkv
