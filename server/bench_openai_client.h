#pragma once
// The client side of `hkv bench-serve --backend openai`: one streamed POST /v1/completions over
// a plain blocking socket, timed the way `vllm bench serve` times it (TTFT at the first chunk
// with text, inter-token latencies between text chunks, token counts from the usage chunk).
//
// Thread-compatible: each call uses its own connection; call from any number of threads.

#include <cstdint>
#include <string>
#include <vector>

#include "absl/time/time.h"

namespace hkv {

struct OpenAiBenchResult {
  bool ok = false;
  std::string error;
  int32_t prompt_tokens = 0;
  int32_t output_tokens = 0;
  absl::Time start;
  std::vector<absl::Time> text_chunks;  // Arrival of each chunk that carried text.
  absl::Time end;
};

// Sends `body` (a JSON completions request with "stream": true and include_usage) to
// http://host:port/v1/completions and reads the event stream to its end.
OpenAiBenchResult RunOpenAiCompletion(const std::string& host, int port, const std::string& body);

// The /v1/models reply of host:port (its body), or an error text starting with "error: ".
std::string FetchOpenAiModels(const std::string& host, int port);

}  // namespace hkv
