#pragma once
// GrpcServer: hosts the Generation service, the standard grpc.health.v1 service and
// reflection, and keeps the probes in step with the engine: a watchdog thread turns readiness
// (hkv.v1.Generation) NOT_SERVING while an engine loop iteration runs past the stall timeout,
// after the loop dies, or while draining, and liveness ("") NOT_SERVING when an iteration runs
// past the liveness timeout or the loop is dead.
//
// Bounded: the port is bound exclusively (a second server on a port in use fails instead of
// sharing it), at most `max_concurrent_streams` Generate/Complete calls run at once (the service
// refuses more with RESOURCE_EXHAUSTED), and the handler thread pool is capped just above that.
//
// Security: with credentials (server/tls/tls_config.h) the API port speaks only TLS; an optional
// second, plaintext port serves nothing but grpc.health.v1 (the same statuses), for the
// kubelet's gRPC probes, which speak neither TLS nor API keys.
//
// Thread-safe: Start once, then Drain/Shutdown from any one thread.

#include <atomic>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "grpcpp/grpcpp.h"
#include "server/engine.h"
#include "server/generation_service.h"
#include "server/server_config.h"

namespace hkv {

struct GrpcServerOptions {
  int max_concurrent_streams = kDefaultMaxConcurrentStreams;
  // The API port's credentials; null: plaintext.
  std::shared_ptr<grpc::ServerCredentials> credentials;
  // The plaintext health-only port: -1 none, 0 a free one (see health_port()).
  int health_port = -1;
  std::string health_host = "0.0.0.0";
};

class GrpcServer {
 public:
  GrpcServer(Engine* engine, std::unique_ptr<GenerationService> service);
  ~GrpcServer();

  // Binds host:port (0 picks a free port) and starts serving; returns the bound port.
  // UNAVAILABLE when the port is in use (by anyone, this process included) or not bindable.
  absl::StatusOr<int> Start(const std::string& host, int port,
                            const GrpcServerOptions& options = {});
  // SIGTERM path: readiness NOT_SERVING, engine drains for up to `timeout`, then the server
  // shuts down (in-flight streams end).
  void DrainAndShutdown(absl::Duration timeout);
  void Shutdown();
  grpc::Server* server() { return server_.get(); }
  // The health-only port bound by Start, or 0 when there is none.
  int health_port() const { return health_port_; }
  GenerationService* service() { return service_.get(); }

 private:
  void Watch();
  // Starts the health-only server; its port, or why not.
  absl::StatusOr<int> StartHealthServer(const std::string& host, int port);
  // Sets a health service status on the API server and the health-only server.
  void SetServing(const char* service, bool serving);

  Engine* engine_;
  std::unique_ptr<GenerationService> service_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<grpc::Server> health_server_;  // null without a health port
  int health_port_ = 0;
  std::atomic<bool> stop_watch_{false};
  std::atomic<bool> draining_{false};
  std::thread watchdog_;
};

}  // namespace hkv
