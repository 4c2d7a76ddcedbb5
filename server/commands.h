#pragma once
// The hkv subcommands. main() parses flags into these option structs and calls one; each
// returns the process exit code. Called from the main thread only.

#include <signal.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "common/sampling_params.h"
#include "executor/dist_bootstrap.h"
#include "server/server_config.h"

namespace hkv {

struct GenerateOptions {
  ServerConfig server;  // model, tokenizer, pool, default policy (kv_policy / budget below).
  std::string prompt;
  std::vector<int32_t> prompt_ids;  // Used instead of `prompt` when non-empty.
  bool use_prompt_ids = false;
  SamplingParams sampling;       // sampling.seed is unused: see `seed`.
  // --temperature / --top-k / --top-p when given; unset ones take the model's defaults
  // (generation_config.json), whatever `sampling` holds.
  std::optional<float> temperature;
  std::optional<int32_t> top_k;
  std::optional<float> top_p;
  bool chat = false;  // --prompt is one user message, rendered through the chat template.
  std::optional<uint64_t> seed;  // Unset: the engine draws one; either way it is printed.
  std::string kv_policy = "full";
  int32_t kv_budget = 128;
  double beta = 1.01;
  bool json = false;
};
int RunGenerate(const GenerateOptions& options);

// Blocks SIGTERM and SIGINT in the calling thread and every thread it starts later, and returns
// that set for sigtimedwait: `hkv serve` handles termination on its main thread only.
sigset_t BlockTerminationSignals();

// `hkv serve`: blocks until SIGTERM/SIGINT, then drains. A multi-node `layout` makes this node 0
// of the group (its engine schedules for every node).
int RunServe(const ServerConfig& config, const DistLayout& layout = DistLayout());
// `hkv serve` on nodes 1..N-1 of a multi-node group: runs node 0's steps on this node's GPUs.
// Exit status: 0 when node 0 stopped the group, 1 when the group could not form, 3 when it broke
// (node 0 or a GPU failed), like a serving node whose worker failed.
int RunFollower(const ServerConfig& config, const DistLayout& layout);

struct HeadkvPlanOptions {
  std::string scores;
  int32_t budget = 128;
  double beta = 1.01;
  int32_t kv_heads = 0;  // 0: the score file's head count (query heads).
  std::string granularity = "kv_head";
  bool json = false;
};
int RunHeadkvPlan(const HeadkvPlanOptions& options);

struct HeadkvScoreOptions {
  ServerConfig server;   // model, tokenizer, device, block_size, max_seqs, max_batch_tokens.
  std::string probes;    // JSONL probe file (headkv/probe_file.h), or the grid below.
  std::string haystack;  // Grid: a text file, and JSONL needles {"needle", "question", "answer"}.
  std::string needles;
  std::vector<int64_t> context_lengths;  // Grid: prompt lengths in tokens.
  std::vector<double> depths;            // Grid: needle depths in [0, 1].
  std::string method = "r2";             // r2 | r.
  std::string out;
  int32_t max_new_tokens = 0;  // 0: the answer's length in tokens.
  bool json = false;
};
int RunHeadkvScore(const HeadkvScoreOptions& options);

struct BenchServeOptions {
  std::string target = "127.0.0.1:50051";
  int32_t num_requests = 64;
  int32_t concurrency = 8;  // Used when request_rate <= 0.
  double request_rate = 0;  // Requests/s (Poisson arrivals); 0 = closed loop at concurrency.
  int32_t input_len = 32;   // Synthetic prompt length (token ids).
  int32_t output_len = 32;
  double range_ratio = 0;    // Lengths uniform in [len (1 - r), len (1 + r)]; 0 = fixed.
  std::string prompts_file;  // One prompt per line instead of synthetic ids.
  std::string kv_policy;     // Empty: server default.
  int32_t kv_budget = 0;
  uint64_t seed = 0;       // Seeds the synthetic prompts and arrival times (requests are greedy).
  double slo_ttft_ms = 0;  // Goodput SLOs; 0 = none.
  double slo_tpot_ms = 0;
  bool json = false;
  std::string json_out;  // Also write the JSON report here.
  std::string backend = "hkv";  // "hkv" (gRPC) or "openai" (HTTP /v1/completions, streamed).
  std::string served_model;     // openai: the model id to send; empty asks /v1/models.
  std::string token_times_out;  // Also write each request's token arrival times (JSONL) here.
};
int RunBenchServe(const BenchServeOptions& options);

// `hkv eval`: a tasks file (headkv/task_file.h) through the engine for each (policy, budget).
struct EvalOptions {
  ServerConfig server;  // Model, device, pool and --head-scores (needed by headkv).
  std::string tasks;
  std::vector<std::string> policies;  // full runs once; the others at every budget.
  std::vector<int32_t> budgets;
  double beta = 1.01;
  int32_t max_new_tokens = 32;
  std::string answer_stop;  // A stop string besides newline and EOS (empty: none).
  bool json = false;
};
int RunEval(const EvalOptions& options);

}  // namespace hkv
