#include "server/metrics.h"

#include <map>
#include <utility>

#include "absl/strings/str_cat.h"
#include "server/http_server.h"

namespace hkv {

Histogram::Histogram(std::vector<double> bounds)
    : bounds_(std::move(bounds)), counts_(bounds_.size() + 1, 0) {}

void Histogram::Observe(double value) {
  size_t i = 0;
  while (i < bounds_.size() && value > bounds_[i]) ++i;
  absl::MutexLock lock(&mu_);
  ++counts_[i];
  sum_ += value;
  ++count_;
}

void Histogram::Render(const std::string& name, std::string* out) const {
  absl::MutexLock lock(&mu_);
  absl::StrAppend(out, "# TYPE ", name, " histogram\n");
  uint64_t cumulative = 0;
  for (size_t i = 0; i < bounds_.size(); ++i) {
    cumulative += counts_[i];
    absl::StrAppend(out, name, "_bucket{le=\"", bounds_[i], "\"} ", cumulative, "\n");
  }
  cumulative += counts_.back();
  absl::StrAppend(out, name, "_bucket{le=\"+Inf\"} ", cumulative, "\n");
  absl::StrAppend(out, name, "_sum ", sum_, "\n", name, "_count ", count_, "\n");
}

namespace {
void Gauge(std::string* out, const char* name, const char* help, double value) {
  absl::StrAppend(out, "# HELP ", name, " ", help, "\n# TYPE ", name, " gauge\n", name, " ",
                  value, "\n");
}
void Counter(std::string* out, const char* name, const char* help, int64_t value) {
  absl::StrAppend(out, "# HELP ", name, " ", help, "\n# TYPE ", name, " counter\n", name, " ",
                  value, "\n");
}
}  // namespace

std::string EngineMetrics::Render() const {
  std::string out;
  Gauge(&out, "hkv_ready", "1 when the model is loaded and the engine loop is alive", ready.load());
  Gauge(&out, "hkv_requests_running", "Requests being generated", requests_running.load());
  Gauge(&out, "hkv_requests_waiting", "Requests queued for admission", requests_waiting.load());
  Gauge(&out, "hkv_kv_blocks_used", "Head-blocks in use", kv_blocks_used.load());
  Gauge(&out, "hkv_kv_blocks_total", "Head-blocks in the pool", kv_blocks_total.load());
  Gauge(&out, "hkv_kv_blocks_used_peak", "Most head-blocks in use at once since start",
        kv_blocks_used_peak.load());
  const int64_t total = kv_blocks_total.load();
  Gauge(&out, "hkv_kv_pool_usage_ratio", "Fraction of the KV pool in use",
        total > 0 ? static_cast<double>(kv_blocks_used.load()) / total : 0.0);
  Counter(&out, "hkv_preemptions_total", "Sequences preempted for recompute",
          preemptions_total.load());
  Counter(&out, "hkv_prompt_tokens_total", "Prompt tokens prefilled", prompt_tokens_total.load());
  Counter(&out, "hkv_generation_tokens_total", "Tokens generated",
          generation_tokens_total.load());
  Counter(&out, "hkv_requests_finished_total", "Requests finished",
          requests_finished_total.load());
  Counter(&out, "hkv_requests_failed_total", "Requests that ended in an error",
          requests_failed_total.load());
  Counter(&out, "hkv_requests_rejected_total", "Requests refused at admission",
          requests_rejected_total.load());
  Counter(&out, "hkv_kv_bytes_kept_total", "KV bytes kept by finished requests",
          kv_bytes_kept_total.load());
  Counter(&out, "hkv_kv_bytes_full_total", "KV bytes a full cache would have kept",
          kv_bytes_full_total.load());
  Counter(&out, "hkv_engine_steps_total", "Engine steps run", engine_steps_total.load());
  {
    absl::MutexLock lock(&mu_);
    absl::StrAppend(&out, "# HELP hkv_kv_blocks_used_by_layer Head-blocks in use per layer\n",
                    "# TYPE hkv_kv_blocks_used_by_layer gauge\n");
    for (size_t l = 0; l < blocks_per_layer_.size(); ++l) {
      absl::StrAppend(&out, "hkv_kv_blocks_used_by_layer{layer=\"", l, "\"} ",
                      blocks_per_layer_[l], "\n");
    }
  }
  time_to_first_token_s.Render("hkv_time_to_first_token_seconds", &out);
  inter_token_latency_s.Render("hkv_inter_token_latency_seconds", &out);
  e2e_latency_s.Render("hkv_e2e_request_latency_seconds", &out);
  queue_time_s.Render("hkv_request_queue_time_seconds", &out);
  return out;
}

void EngineMetrics::SetBlocksPerLayer(std::vector<int64_t> blocks) {
  absl::MutexLock lock(&mu_);
  blocks_per_layer_ = std::move(blocks);
}

std::vector<int64_t> EngineMetrics::BlocksPerLayer() const {
  absl::MutexLock lock(&mu_);
  return blocks_per_layer_;
}

MetricsServer::MetricsServer(const EngineMetrics* metrics) {
  std::map<std::string, HttpHandler> routes;
  routes["/metrics"] = [metrics] {
    return HttpResponse{200, "text/plain; version=0.0.4", metrics->Render()};
  };
  routes["/healthz"] = [metrics] {
    const bool ready = metrics->ready.load() != 0;
    return HttpResponse{ready ? 200 : 503, "text/plain", ready ? "ok\n" : "not ready\n"};
  };
  http_ = std::make_unique<HttpGetServer>(std::move(routes));
}

MetricsServer::~MetricsServer() { Stop(); }

absl::Status MetricsServer::Start(const std::string& host, int port) {
  absl::StatusOr<int> bound = http_->Start(host, port, "--metrics-port");
  if (!bound.ok()) {
    return absl::UnavailableError(absl::StrCat("metrics: ", bound.status().message()));
  }
  port_ = *bound;
  return absl::OkStatus();
}

void MetricsServer::Stop() { http_->Stop(); }

int MetricsServer::open_connections() const { return http_->open_connections(); }

}  // namespace hkv
