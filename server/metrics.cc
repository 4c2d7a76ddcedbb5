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

void Histogram::Render(const std::string& name, std::string* out, const std::string& labels) const {
  absl::MutexLock lock(&mu_);
  const std::string prefix = labels.empty() ? "" : absl::StrCat(labels, ",");
  const std::string braces = labels.empty() ? "" : absl::StrCat("{", labels, "}");
  absl::StrAppend(out, "# TYPE ", name, " histogram\n");
  uint64_t cumulative = 0;
  for (size_t i = 0; i < bounds_.size(); ++i) {
    cumulative += counts_[i];
    absl::StrAppend(out, name, "_bucket{", prefix, "le=\"", bounds_[i], "\"} ", cumulative, "\n");
  }
  cumulative += counts_.back();
  absl::StrAppend(out, name, "_bucket{", prefix, "le=\"+Inf\"} ", cumulative, "\n");
  absl::StrAppend(out, name, "_sum", braces, " ", sum_, "\n", name, "_count", braces, " ", count_,
                  "\n");
}

namespace {
void Gauge(std::string* out, const char* name, const char* help, double value) {
  absl::StrAppend(out, "# HELP ", name, " ", help, "\n# TYPE ", name, " gauge\n", name, " ", value,
                  "\n");
}
void Counter(std::string* out, const char* name, const char* help, int64_t value) {
  absl::StrAppend(out, "# HELP ", name, " ", help, "\n# TYPE ", name, " counter\n", name, " ",
                  value, "\n");
}
// A label value in the text format: backslash, double quote and newline escaped.
std::string LabelValue(const std::string& v) {
  std::string out;
  for (char c : v) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '"') {
      out += "\\\"";
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  return out;
}

// One sample of a labelled family: `name{labels} value`.
void Sample(std::string* out, const char* name, const char* type, const char* help,
            const std::string& labels, double value) {
  absl::StrAppend(out, "# HELP ", name, " ", help, "\n# TYPE ", name, " ", type, "\n", name, "{",
                  labels, "} ", value, "\n");
}
}  // namespace

void EngineMetrics::CountFinish(FinishReason reason) {
  switch (reason) {
    case FinishReason::kStop:
    case FinishReason::kEos:
      finished_stop_total++;
      break;
    case FinishReason::kLength:
      finished_length_total++;
      break;
    case FinishReason::kAborted:
    case FinishReason::kDeadline:
      finished_abort_total++;
      break;
    case FinishReason::kError:
    case FinishReason::kNone:
      finished_error_total++;
      break;
  }
}

void EngineMetrics::SetModelInfo(std::string model_name,
                                 std::vector<std::pair<std::string, std::string>> cache_config) {
  absl::MutexLock lock(&mu_);
  model_name_ = std::move(model_name);
  cache_config_ = std::move(cache_config);
}

void EngineMetrics::RenderVllm(std::string* out) const {
  std::string model;
  std::string cache_labels;
  {
    absl::MutexLock lock(&mu_);
    model = absl::StrCat("model_name=\"", LabelValue(model_name_), "\"");
    cache_labels = model;
    for (const auto& [name, value] : cache_config_) {
      absl::StrAppend(&cache_labels, ",", name, "=\"", LabelValue(value), "\"");
    }
  }
  Sample(out, "vllm:num_requests_running", "gauge", "Requests being generated", model,
         requests_running.load());
  Sample(out, "vllm:num_requests_waiting", "gauge", "Requests queued for admission", model,
         requests_waiting.load());
  const int64_t total = kv_blocks_total.load();
  Sample(out, "vllm:kv_cache_usage_perc", "gauge", "KV pool usage, 1 = full", model,
         total > 0 ? static_cast<double>(kv_blocks_used.load()) / total : 0.0);
  Sample(out, "vllm:num_preemptions_total", "counter", "Sequences preempted", model,
         preemptions_total.load());
  Sample(out, "vllm:prompt_tokens_total", "counter", "Prompt tokens prefilled", model,
         prompt_tokens_total.load());
  Sample(out, "vllm:generation_tokens_total", "counter", "Tokens generated", model,
         generation_tokens_total.load());
  absl::StrAppend(out, "# HELP vllm:request_success_total Finished requests by reason\n",
                  "# TYPE vllm:request_success_total counter\n");
  const std::pair<const char*, int64_t> reasons[] = {{"stop", finished_stop_total.load()},
                                                     {"length", finished_length_total.load()},
                                                     {"abort", finished_abort_total.load()},
                                                     {"error", finished_error_total.load()}};
  for (const auto& [reason, n] : reasons) {
    absl::StrAppend(out, "vllm:request_success_total{", model, ",finished_reason=\"", reason,
                    "\"} ", n, "\n");
  }
  Sample(out, "vllm:cache_config_info", "gauge", "KV cache configuration (value 1)", cache_labels,
         1);
  time_to_first_token_s.Render("vllm:time_to_first_token_seconds", out, model);
  inter_token_latency_s.Render("vllm:inter_token_latency_seconds", out, model);
  e2e_latency_s.Render("vllm:e2e_request_latency_seconds", out, model);
  queue_time_s.Render("vllm:request_queue_time_seconds", out, model);
}

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
  Counter(&out, "hkv_generation_tokens_total", "Tokens generated", generation_tokens_total.load());
  Counter(&out, "hkv_requests_finished_total", "Requests finished", requests_finished_total.load());
  Counter(&out, "hkv_requests_failed_total", "Requests that ended in an error",
          requests_failed_total.load());
  Counter(&out, "hkv_requests_rejected_total", "Requests refused at admission",
          requests_rejected_total.load());
  Counter(&out, "hkv_kv_bytes_kept_total", "KV bytes kept by finished requests",
          kv_bytes_kept_total.load());
  Counter(&out, "hkv_kv_bytes_full_total", "KV bytes a full cache would have kept",
          kv_bytes_full_total.load());
  Counter(&out, "hkv_engine_steps_total", "Engine steps run", engine_steps_total.load());
  absl::StrAppend(&out,
                  "# HELP hkv_engine_step_seconds_total Engine loop time by part of the step: "
                  "schedule (build the step), execute (the worker runs it), update (apply its "
                  "results), deliver (push the step's outputs to the clients' streams)\n# TYPE "
                  "hkv_engine_step_seconds_total counter\n");
  for (const auto& [phase, ns] :
       {std::pair<const char*, int64_t>{"schedule", engine_schedule_ns_total.load()},
        {"execute", engine_execute_ns_total.load()},
        {"update", engine_update_ns_total.load()},
        {"deliver", engine_deliver_ns_total.load()}}) {
    absl::StrAppend(&out, "hkv_engine_step_seconds_total{phase=\"", phase, "\"} ", ns * 1e-9, "\n");
  }
  Counter(&out, "hkv_engine_step_tokens_total", "Tokens run by engine steps, prefill and decode",
          engine_step_tokens_total.load());
  Counter(&out, "hkv_engine_prefill_steps_total", "Engine steps that ran a prompt chunk",
          engine_prefill_steps_total.load());
  Counter(&out, "hkv_engine_ahead_steps_total",
          "Engine steps launched while the step before them ran (async scheduling)",
          engine_ahead_steps_total.load());
  Counter(&out, "hkv_requests_unauthenticated_total",
          "Calls refused for a missing or wrong API key", requests_unauthenticated_total.load());
  {
    absl::MutexLock lock(&mu_);
    absl::StrAppend(&out, "# HELP hkv_kv_blocks_used_by_layer Head-blocks in use per layer\n",
                    "# TYPE hkv_kv_blocks_used_by_layer gauge\n");
    for (size_t l = 0; l < blocks_per_layer_.size(); ++l) {
      absl::StrAppend(&out, "hkv_kv_blocks_used_by_layer{layer=\"", l, "\"} ", blocks_per_layer_[l],
                      "\n");
    }
  }
  time_to_first_token_s.Render("hkv_time_to_first_token_seconds", &out);
  inter_token_latency_s.Render("hkv_inter_token_latency_seconds", &out);
  e2e_latency_s.Render("hkv_e2e_request_latency_seconds", &out);
  queue_time_s.Render("hkv_request_queue_time_seconds", &out);
  RenderVllm(&out);
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

void MetricsServer::UseTls(TlsContextSource* tls) { http_->UseTls(tls); }

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
