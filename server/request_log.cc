#include "server/request_log.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace hkv {
namespace {

LogField Text(const char* key, const std::string& value) { return {key, value, false}; }
LogField Int(const char* key, int64_t value) { return {key, absl::StrCat(value), true}; }
LogField Ms(const char* key, double value) { return {key, absl::StrFormat("%.3f", value), true}; }

}  // namespace

std::vector<LogField> FinishedRequestFields(const FinishedRequest& r) {
  std::vector<LogField> f;
  f.push_back(Text("request_id", r.request_id));
  if (!r.tenant.empty()) f.push_back(Text("tenant", r.tenant));
  if (!r.traceparent.empty()) f.push_back(Text("traceparent", r.traceparent));
  f.push_back(Int("prompt_tokens", r.prompt_tokens));
  f.push_back(Int("generated_tokens", r.generated_tokens));
  f.push_back(Ms("queue_ms", r.queue_ms));
  f.push_back(Ms("ttft_ms", r.ttft_ms));
  f.push_back(Ms("e2e_ms", r.e2e_ms));
  f.push_back(Int("kv_tokens_kept", r.kv_tokens_kept));
  f.push_back(Int("kv_tokens_full", r.kv_tokens_full));
  f.push_back(Int("preemptions", r.preemptions));
  f.push_back(Text("finish_reason", r.finish_reason));
  f.push_back(Text("status", r.status));
  return f;
}

void LogFinishedRequest(const FinishedRequest& r) {
  HKV_LOG_EVENT(INFO, "request finished", FinishedRequestFields(r));
}

}  // namespace hkv
