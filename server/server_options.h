#pragma once
// The one list of `hkv serve` options: each line gives an option's type, name, default and help.
// It expands into everything that names options:
//   - the ServerConfig struct's fields (server_config.h);
//   - the YAML/JSON file keys and the `--print-config` JSON, in this order (server_config.cc,
//     through ServerConfigFields());
//   - the ABSL_FLAGs and the command-line overrides of the file (main.cc).
// A new option is one line here, plus its check in ValidateServerConfig when it has a range.
//
// NOTE(server): an X-macro rather than a table of structs because ABSL_FLAG must be a static
// definition at namespace scope, and must be defined in main.cc itself: `hkv serve --help` lists
// the flags defined beside --model (FlagsDefinedBeside), and flags are parsed only in main.
//
// Flags that are not config keys (--config, --print-config, the multi-node --world-size, --rank
// and --dist-addr, which differ per node, and the --dist-token secret) are written in main.cc
// alone. --print-config shows the api_key option redacted.
//
// HKV_SERVER_OPTIONS(X) calls X(type, name, default, help) once per option. Types are bool,
// int32_t, int64_t, double or std::string; the help text is the flag's.

#include <cstdint>
#include <string>

namespace hkv {

// Generate/Complete calls in flight at once; each holds a gRPC handler thread.
inline constexpr int32_t kDefaultMaxConcurrentStreams = 2048;

}  // namespace hkv

// clang-format off
#define HKV_SERVER_OPTIONS(X)                                                                    \
  X(std::string, model, "",                                                                      \
    "llama2.c checkpoint (.bin) or Hugging Face model directory "                                \
    "(default: the embedded stories260K)")                                                       \
  X(std::string, tokenizer, "", "Tokenizer path (default: beside the model)")                    \
  X(bool, dummy_weights, false,                                                                  \
    "Random weights for --model's config.json (a Hugging Face model directory)")                 \
  X(std::string, host, "0.0.0.0", "Address to listen on")                                        \
  X(int32_t, port, 50051, "gRPC port")                                                           \
  X(int32_t, metrics_port, 9090, "HTTP /metrics and /healthz port (0 disables)")                 \
  X(std::string, metrics_host, "127.0.0.1",                                                      \
    "Address of /metrics and /healthz (0.0.0.0 for Prometheus scrapes from other hosts)")        \
  X(int32_t, max_concurrent_streams, ::hkv::kDefaultMaxConcurrentStreams,                        \
    "Most Generate/Complete calls in flight; more get RESOURCE_EXHAUSTED")                       \
  X(std::string, device, "auto", "cpu | cuda | auto (cuda when a GPU is present)")               \
  X(int32_t, tensor_parallel_size, 1,                                                            \
    "GPUs to shard the model over (one thread per GPU, NCCL)")                                   \
  X(std::string, tp_head_placement, "balanced",                                                  \
    "balanced (even KV per rank under the HeadKV plan; needs --head-scores) | contiguous")       \
  X(int64_t, kv_pool_blocks, 0, "KV pool size in head-blocks (0: from --kv-pool-gb)")            \
  X(double, kv_pool_gb, 0.25, "KV pool size in GiB when --kv-pool-blocks is 0 (CPU)")            \
  X(double, gpu_memory_utilization, 0.9, "Share of GPU memory hkv may use")                      \
  X(int32_t, block_size, 16, "Tokens per head-block")                                            \
  X(int32_t, max_batch_tokens, 8192, "Token budget of one engine step")                          \
  X(int32_t, max_step_ms, 0,                                                                     \
    "While streams decode, cut prefill chunks so a step's predicted time stays under this "      \
    "(0: off)")                                                                                  \
  X(double, max_prefill_share, 0,                                                                \
    "While streams decode, the most share of GPU time prefills may take, in [0, 1) (0: off)")    \
  X(int32_t, max_seqs, 256, "Most sequences running at once")                                    \
  X(int32_t, max_model_len, 0, "Longest prompt + output (0: the model's context length)")        \
  X(int64_t, max_prompt_bytes, 0,                                                                \
    "Longest text prompt in bytes, refused before tokenizing (0: context x the longest "         \
    "token's bytes)")                                                                            \
  X(int32_t, cuda_graph_max_batch, 256, "Largest decode batch run as a CUDA graph (0: eager)")   \
  X(bool, page_table_deltas, true,                                                              \
    "Steps send the page tables' changes only; the worker keeps them (false: all, every step)")  \
  X(bool, async_scheduling, true,                                                               \
    "Plan step N+1 while the worker runs step N (one-GPU CUDA and CPU workers, no pacing)")      \
  X(std::string, cuda_prefill_kernel, "auto",                                                    \
    "Prefill attention kernel: auto (wgmma on sm_90, else mma) | mma | wgmma (sm_90 only)")      \
  X(bool, cuda_fused_decode, false,                                                              \
    "Fused decode layers on one GPU (RMSNorm + GEMV, RoPE + KV append in one kernel each)")      \
  X(int32_t, max_queue, 1024, "Most requests waiting; more get RESOURCE_EXHAUSTED")              \
  X(std::string, default_kv_policy, "full", "serve: KV policy of requests that name none")       \
  X(int32_t, default_kv_budget, 128, "serve: KV budget of requests that name none")              \
  X(std::string, head_scores, "", "HeadKV score file (for the headkv policy)")                   \
  X(std::string, chat_template, "",                                                              \
    "Jinja chat template file, used instead of the model's own (chat_template.jinja or "         \
    "tokenizer_config.json)")                                                                    \
  X(int32_t, drain_timeout_s, 30, "On SIGTERM, seconds to let in-flight requests finish")        \
  X(int32_t, num_threads, 0, "CPU worker threads (0 = all cores)")                               \
  X(int32_t, engine_stall_timeout_s, 30,                                                         \
    "An engine loop iteration longer than this turns readiness NOT_SERVING")                     \
  X(int32_t, engine_liveness_timeout_s, 300,                                                     \
    "An engine loop iteration longer than this turns liveness NOT_SERVING (restart)")            \
  X(int32_t, dist_join_timeout_s, 600, "Multi-node: seconds the nodes may take to form the group") \
  X(int32_t, max_stop_strings, 64, "Most stop strings per request; more get INVALID_ARGUMENT")    \
  X(int32_t, max_stop_bytes, 4096,                                                               \
    "Most bytes of one request's stop strings together; more get INVALID_ARGUMENT")              \
  X(int32_t, max_stop_token_ids, 256,                                                            \
    "Most stop token ids per request; more get INVALID_ARGUMENT")                                \
  X(int32_t, http_port, 8000,                                                                    \
    "OpenAI-compatible HTTP API port, on --host (0 disables)")                                   \
  X(std::string, served_model_name, "",                                                          \
    "HTTP API model ids, comma-separated (default: the model directory's name)")                 \
  X(int64_t, http_max_body_bytes, 4194304, "Largest HTTP request body; more get 413")           \
  X(int32_t, http_max_connections, 8192,                                                         \
    "Most open HTTP API connections; past it the oldest one still sending is closed")              \
  X(std::string, tls_cert, "", "PEM certificate chain: the API and /metrics speak TLS")          \
  X(std::string, tls_key, "", "PEM private key of --tls-cert")                                   \
  X(std::string, tls_client_ca, "",                                                              \
    "PEM CA bundle: clients must present a certificate it signed (mutual TLS)")                  \
  X(int32_t, tls_reload_interval_s, 60,                                                          \
    "Seconds between checks of the TLS files for a rotated certificate")                         \
  X(std::string, api_key, "",                                                                    \
    "API keys (comma-separated, or the flag repeated): calls need authorization: Bearer KEY")    \
  X(std::string, api_key_file, "", "File of API keys, one per line: KEY [TENANT]")               \
  X(int32_t, max_requests_per_key, 0,                                                            \
    "Most requests one key's tenant may have queued or running (0: no cap)")                     \
  X(int32_t, health_port, 0,                                                                     \
    "Plaintext gRPC port serving only grpc.health.v1, for kubelet probes (0: none)")             \
  X(std::string, log_level, "info", "info | warning | error")                                    \
  X(std::string, log_format, "text", "text | json (one JSON object per line)")                   \
  X(int32_t, stats_interval_s, 10,                                                               \
    "Seconds between stats log lines: running, waiting, pool use, tokens/s (0: none)")             \
  X(int32_t, max_n, 16, "Most samples per request (sampling.n); more get INVALID_ARGUMENT")
// clang-format on
