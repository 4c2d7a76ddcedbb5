#pragma once
// The one log line per finished request, the same for every front end:
//
//   I1201 17:40:00.123 generation_service.cc:250] request finished request_id=hkv-3f..
//     tenant=key1 traceparent=00-.. prompt_tokens=5 generated_tokens=32 queue_ms=0.1
//     ttft_ms=4.2 e2e_ms=9.8 kv_tokens_kept=320 kv_tokens_full=740 preemptions=0
//     finish_reason=length status=OK
//
// (one line; with --log-format json, the same fields as members of one JSON object).
// Thread-safe: pure functions.

#include <cstdint>
#include <string>
#include <vector>

#include "common/logging.h"

namespace hkv {

struct FinishedRequest {
  std::string request_id;
  std::string tenant;       // "" without API keys (not logged then).
  std::string traceparent;  // "" when the client sent none (not logged then).
  int32_t prompt_tokens = 0;
  int32_t generated_tokens = 0;
  double queue_ms = 0;
  double ttft_ms = 0;
  double e2e_ms = 0;
  int64_t kv_tokens_kept = 0;
  int64_t kv_tokens_full = 0;
  int32_t preemptions = 0;
  std::string finish_reason;  // length, stop, eos, aborted, deadline, error, refused
  std::string status = "OK";  // The call's status code name.
};

// Returns the line's fields, in the order shown above.
std::vector<LogField> FinishedRequestFields(const FinishedRequest& r);

// Logs the line at INFO.
void LogFinishedRequest(const FinishedRequest& r);

}  // namespace hkv
