#pragma once
// The engine half of `hkv headkv-score`: runs HeadKV scoring probes through a Worker's own
// forward pass (batched, greedy, full KV) with attention probes on every decode step
// (common/batch.h), and scores each probe with headkv's R2 / R scorers.
//
// Procedure (Wu et al.'s and HeadKV's reference code): prefill the prompt but its last token
// (in chunks of at most max_step_tokens, several probes per step), then decode one token a step
// starting from the last prompt token; every decode step, including the one that produces
// EOS or a newline, adds to the probe's head scores. A probe is accepted when its response
// scores > 0.5 against the answer (QA-F1 for r2, ROUGE-1 recall for r).
//
// The runner owns the worker's KV pool: each batch of probes gets its own blocks, rows of a
// probe contiguous. Not thread-safe; one RunProbes at a time, on the worker's thread.

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "headkv/head_importance.h"
#include "headkv/probe_file.h"
#include "tokenizer/tokenizer.h"
#include "workers/worker.h"

namespace hkv {

enum class ProbeMethod { kR2, kR };

struct ProbeRunOptions {
  ProbeMethod method = ProbeMethod::kR2;
  int32_t max_new_tokens = 0;      // 0: the answer's length in tokens (" " + answer).
  int32_t max_seqs = 8;            // Probes decoded together.
  int32_t max_step_tokens = 8192;  // Prefill tokens per step, all probes together.
  int64_t max_pool_blocks = 0;     // 0: what the worker reports (its capacity).
  int32_t block_size = 16;         // The worker's (ServerConfig::block_size).
};

// One probe as the worker runs it.
struct PreparedProbe {
  std::string id;
  std::string answer;
  std::vector<TokenId> prompt;  // BOS first when the tokenizer has one.
  AnswerSpan span;              // Token positions of the probe's character span.
  int32_t max_new_tokens = 0;
};

struct ProbeOutcome {
  std::string id;
  std::vector<TokenId> output;  // Generated ids, the stopping EOS/newline token included.
  std::string response;         // Text of `output` up to the first newline, EOS dropped.
  double metric = 0;            // QA-F1 (r2) or ROUGE-1 recall (r) against the answer.
  bool accepted = false;
  std::vector<double> scores;  // [num_layers * num_q_heads], layer-major.
};

struct ProbeRunReport {
  std::vector<ProbeOutcome> probes;  // In input order.
  int32_t num_accepted = 0;
};

// Tokenizes `probe` (its prompt, then " " + question unless the prompt already ends with the
// question) and maps its character span onto the tokens whose bytes overlap it.
// INVALID_ARGUMENT when the tokenizer does not give back the prompt's bytes, the span covers
// more than kMaxProbeTopN tokens, or prompt + new tokens exceed `max_seq_len`.
absl::StatusOr<PreparedProbe> PrepareProbe(const Probe& probe, const Tokenizer& tokenizer,
                                           int32_t max_new_tokens, int32_t max_seq_len);

// Runs every probe and scores it. INVALID_ARGUMENT for a probe the model cannot take,
// RESOURCE_EXHAUSTED when one probe's KV does not fit the pool, or the worker's error.
// REQUIRES: no step has run on `worker` yet (the runner sizes its pool).
absl::StatusOr<ProbeRunReport> RunProbes(Worker* worker, const Tokenizer& tokenizer,
                                         const std::vector<PreparedProbe>& probes,
                                         const ProbeRunOptions& options);

}  // namespace hkv
