// `hkv serve`: the gRPC server, and the OpenAI-compatible HTTP API beside it over the same
// engine (--http-port). SIGTERM/SIGINT drain it (stop admitting, let in-flight requests
// finish within drain_timeout_s, abort the rest) and exit 0; if the shutdown is still not done
// kShutdownGrace after the drain (a stuck handler or engine step), the process exits 1
// regardless. When the worker fails (a CUDA error, a tensor-parallel rank that died or hung) the
// engine has already failed its requests with UNAVAILABLE and readiness is NOT_SERVING; the
// process then exits with status 3 after a short grace period, so that its supervisor
// (Kubernetes) restarts it instead of leaving a server that can never serve again.

#include <signal.h>

#include <cstdlib>
#include <iostream>

#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/exit_watchdog.h"
#include "common/logging.h"
#include "headkv/kv_policy.h"
#include "server/auth/api_keys.h"
#include "server/auth/tenant_limiter.h"
#include "server/commands.h"
#include "server/grpc_server.h"
#include "server/metrics.h"
#include "server/model_setup.h"
#include "server/openai_api.h"
#include "server/streaming_http_server.h"
#include "server/stats_reporter.h"
#include "server/tls/tls_config.h"

namespace hkv {
namespace {

// Time between a worker failure and the exit: long enough for health probes and metrics to
// report NOT_SERVING, short enough for a quick restart.
constexpr absl::Duration kWorkerFailureGrace = absl::Seconds(3);
// After a worker failure, the orderly shutdown may block in a driver call on a wedged GPU (a
// collective whose peer is gone); past this, the process exits regardless.
constexpr absl::Duration kShutdownLimit = absl::Seconds(15);
// An engine loop iteration running this long means the worker (or the loop) hangs in a way its
// own timeouts did not catch (a tensor-parallel step aborts itself after 5 minutes; liveness
// turns NOT_SERVING after engine_liveness_timeout_s): exit so that a supervisor restarts the
// server even where no liveness probe watches it.
constexpr absl::Duration kStuckStepLimit = absl::Minutes(10);
// After SIGTERM, what follows the drain (aborting the rest, ending the streams, stopping the
// engine) takes well under a second unless something is stuck; past this, the process exits.
constexpr absl::Duration kShutdownGrace = absl::Seconds(10);

hkv::v1::ModelInfo MakeModelInfo(const ServerConfig& config, const EngineBundle& bundle) {
  const ModelConfig& m = bundle.loaded.model->config;
  hkv::v1::ModelInfo info;
  info.set_model_name(m.name);
  info.set_architecture(m.architecture);
  info.set_context_length(m.max_seq_len);
  info.set_num_layers(m.num_layers);
  info.set_num_attention_heads(m.num_heads);
  info.set_num_kv_heads(m.num_kv_heads);
  info.set_head_dim(m.head_dim);
  info.set_vocab_size(m.vocab_size);
  info.set_block_size(config.block_size);
  info.set_kv_pool_blocks(bundle.sizing.num_blocks);
  info.set_kv_pool_bytes(bundle.sizing.num_blocks * bundle.sizing.bytes_per_block);
  for (const char* name : {"full", "snapkv", "pyramidkv", "adakv", "headkv"}) {
    if (std::string(name) == "headkv" && config.head_scores.empty()) continue;
    info.add_kv_policies(name);
  }
  info.set_default_kv_policy(config.default_kv_policy);
  info.set_default_kv_budget(config.default_kv_budget);
  info.set_device(bundle.engine->worker_name());
  info.set_chat_supported(bundle.loaded.chat != nullptr);
  return info;
}

// The labels of vllm:cache_config_info.
std::vector<std::pair<std::string, std::string>> CacheConfigLabels(const ServerConfig& config,
                                                                   const EngineBundle& bundle) {
  return {{"block_size", absl::StrCat(config.block_size)},
          {"num_gpu_blocks", absl::StrCat(bundle.sizing.num_blocks)},
          {"cache_dtype",
           bundle.engine->worker_name().find("cuda") != std::string::npos ? "bfloat16" : "float32"},
          {"kv_policy", config.default_kv_policy},
          {"kv_budget", absl::StrCat(config.default_kv_budget)},
          {"enable_prefix_caching", "False"}};
}

TlsConfig TlsFromConfig(const ServerConfig& config) {
  TlsConfig tls;
  tls.cert = config.tls_cert;
  tls.key = config.tls_key;
  tls.client_ca = config.tls_client_ca;
  tls.reload_interval = absl::Seconds(config.tls_reload_interval_s);
  return tls;
}

}  // namespace

sigset_t BlockTerminationSignals() {
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  return signals;
}

int RunServe(const ServerConfig& config, const DistLayout& layout) {
  // The main thread waits for the termination signals below.
  sigset_t signals = BlockTerminationSignals();

  // Security settings are checked before the model loads: a typo must not cost a load.
  const TlsConfig tls = TlsFromConfig(config);
  if (absl::Status s = ValidateTlsConfig(tls); !s.ok()) {
    std::cerr << "hkv serve: " << s.message() << "\n";
    return 1;
  }
  absl::StatusOr<ApiKeySet> keys = ApiKeySet::Load(config.api_key, config.api_key_file);
  if (!keys.ok()) {
    std::cerr << "hkv serve: " << keys.status().message() << "\n";
    return 1;
  }
  auto bundle = BuildEngine(config, layout);
  if (!bundle.ok()) {
    std::cerr << "hkv serve: " << bundle.status().message() << "\n";
    return 1;
  }
  HKV_LOG(INFO) << "model " << bundle->loaded.model->config.name << " ("
                << bundle->loaded.model->config.architecture << ") on "
                << bundle->engine->worker_name();
  std::cerr << bundle->sizing.summary << "\n";
  Engine& engine = *bundle->engine;
  engine.mutable_metrics()->SetModelInfo(bundle->loaded.model->config.name,
                                         CacheConfigLabels(config, *bundle));
  engine.Start();
  StatsReporter stats(&engine.metrics(), absl::Seconds(config.stats_interval_s));
  stats.Start();

  MetricsServer metrics(&engine.metrics());
  // The OpenSSL servers' (metrics and the HTTP API) contexts, from the same files as gRPC's;
  // new connections get rotated certificates too.
  std::unique_ptr<TlsContextSource> openssl_tls;
  if (tls.enabled()) {
    auto source = TlsContextSource::Create(tls);
    if (!source.ok()) {
      std::cerr << "hkv serve: " << source.status().message() << "\n";
      return 1;
    }
    openssl_tls = *std::move(source);
    metrics.UseTls(openssl_tls.get());
  }
  if (config.metrics_port > 0) {
    absl::Status s = metrics.Start(config.metrics_host, config.metrics_port);
    if (!s.ok()) {
      std::cerr << "hkv serve: " << s.message() << "\n";
      return 1;
    }
    HKV_LOG(INFO) << "metrics on " << (tls.enabled() ? "https://" : "http://")
                  << config.metrics_host << ":" << metrics.port() << "/metrics";
  }
  auto service =
      std::make_unique<GenerationService>(&engine, bundle->loaded.tokenizer, bundle->loaded.chat,
                                          MakeModelInfo(config, *bundle), config.max_prompt_bytes);
  const size_t num_keys = keys->size();
  // Shared with any other front end, so that one per-key limit covers them all.
  auto tenant_limiter = std::make_shared<TenantLimiter>(config.max_requests_per_key);
  auto api_keys = std::make_shared<const ApiKeySet>(*std::move(keys));
  service->SetApiKeys(api_keys, tenant_limiter);
  GrpcServer server(&engine, std::move(service));
  GrpcServerOptions server_options;
  server_options.max_concurrent_streams = config.max_concurrent_streams;
  if (tls.enabled()) server_options.credentials = GrpcServerTlsCredentials(tls);
  if (config.health_port > 0) {
    server_options.health_port = config.health_port;
    server_options.health_host = config.host;
  }
  auto port = server.Start(config.host, config.port, server_options);
  if (!port.ok()) {
    std::cerr << "hkv serve: " << port.status().message() << "\n";
    return 1;
  }
  HKV_LOG(INFO) << "serving hkv.v1.Generation on " << config.host << ":" << *port
                << (tls.enabled() ? (tls.mutual() ? " (mutual TLS)" : " (TLS)") : " (plaintext)")
                << (num_keys > 0 ? absl::StrCat(", ", num_keys, " API keys") : std::string());
  if (server.health_port() > 0) {
    HKV_LOG(INFO) << "plaintext gRPC health on " << config.host << ":" << server.health_port();
  }
  // Declared after the engine (in `bundle`), which outlives them: the API's
  // replies cancel engine requests when their clients leave.
  OpenAiApi api(&engine, bundle->loaded.tokenizer, bundle->loaded.chat,
                OpenAiApiOptionsFrom(config));
  api.SetApiKeys(api_keys, tenant_limiter);
  StreamingHttpServer http(
      [&api](const HttpRequest& r, const std::function<void()>& wake) {
        return api.Handle(r, wake);
      },
      HttpLimitsFrom(config));
  if (openssl_tls != nullptr) http.UseTls(openssl_tls.get());
  if (config.http_port > 0) {
    auto http_port = http.Start(config.host, config.http_port, "--http-port");
    if (!http_port.ok()) {
      std::cerr << "hkv serve: " << http_port.status().message() << "\n";
      return 1;
    }
    HKV_LOG(INFO) << "serving the OpenAI-compatible API on "
                  << (tls.enabled() ? "https://" : "http://") << config.host << ":" << *http_port
                  << "/v1 as " << ServedModelNames(config)[0]
                  << (tls.mutual() ? " (mutual TLS)" : "")
                  << (num_keys > 0 ? absl::StrCat(", ", num_keys, " API keys") : std::string());
    std::cout << "hkv serve: http on " << config.host << ":" << *http_port << std::endl;
  }
  std::cout << "hkv serve: listening on " << config.host << ":" << *port << std::endl;

  int signal_number = 0;
  const timespec tick = {0, 200 * 1000 * 1000};
  absl::Time failed_at = absl::InfiniteFuture();
  while (true) {
    signal_number = sigtimedwait(&signals, nullptr, &tick);
    if (signal_number > 0) break;
    if (engine.WorkerFailed() && failed_at == absl::InfiniteFuture()) {
      failed_at = absl::Now();
      HKV_LOG(ERROR) << "the worker failed; exiting in " << kWorkerFailureGrace;
    }
    if (engine.IterationRunningFor() > kStuckStepLimit) {
      HKV_LOG(ERROR) << "an engine loop iteration has run for " << engine.IterationRunningFor()
                     << "; the worker or the loop hangs, exiting";
      std::cerr.flush();
      std::_Exit(3);
    }
    if (absl::Now() - failed_at > kWorkerFailureGrace) {
      ExitAfter(kShutdownLimit, 3, "the shutdown after a worker failure did not finish");
      server.DrainAndShutdown(absl::ZeroDuration());
      http.Stop();
      stats.Stop();
      engine.Stop();
      metrics.Stop();
      return 3;
    }
  }
  HKV_LOG(INFO) << "signal " << signal_number << ": draining for up to " << config.drain_timeout_s
                << " s";
  ExitAfter(absl::Seconds(config.drain_timeout_s) + kShutdownGrace, 1,
            "the shutdown after the drain did not finish");
  server.DrainAndShutdown(absl::Seconds(config.drain_timeout_s));
  http.Stop();
  stats.Stop();
  engine.Stop();
  metrics.Stop();
  HKV_LOG(INFO) << "drained; exiting";
  return 0;
}

}  // namespace hkv
