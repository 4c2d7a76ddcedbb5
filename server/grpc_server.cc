#include "server/grpc_server.h"

#include <chrono>

#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/health_check_service_interface.h"
#include "grpcpp/resource_quota.h"
#include "server/listen_socket.h"
#include "server/parse_error_interceptor.h"
#include "server/server_config.h"

namespace hkv {
namespace {

// Handler threads beyond one per stream: the pollers gRPC keeps idle (at most 2) and quick
// calls (Abort, GetModelInfo, reflection, refusals past the stream limit), so that a client can
// still abort its stream when every stream slot is taken. Health checks do not use this pool.
constexpr int kThreadsBeyondStreams = 16;

}  // namespace

GrpcServer::GrpcServer(Engine* engine, std::unique_ptr<GenerationService> service)
    : engine_(engine), service_(std::move(service)) {}

GrpcServer::~GrpcServer() { Shutdown(); }

absl::StatusOr<int> GrpcServer::Start(const std::string& host, int port,
                                      const GrpcServerOptions& options) {
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  service_->SetMaxConcurrentCalls(options.max_concurrent_streams);
  grpc::ServerBuilder builder;
  int bound_port = 0;
  builder.AddListeningPort(
      absl::StrCat(host, ":", port),
      options.credentials != nullptr ? options.credentials : grpc::InsecureServerCredentials(),
      &bound_port);
  // gRPC sets SO_REUSEPORT by default, so a second server on the same port would start and
  // silently take part of its connections.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  // The synchronous server runs each call on its own thread: cap the pool so that no number of
  // clients can make the process spawn threads without bound.
  grpc::ResourceQuota quota("hkv-grpc-server");
  quota.SetMaxThreads(options.max_concurrent_streams + kThreadsBeyondStreams);
  builder.SetResourceQuota(quota);
  builder.RegisterService(service_.get());
  builder.SetMaxReceiveMessageSize(64 << 20);
  builder.experimental().SetInterceptorCreators(ParseErrorInterceptors());
  server_ = builder.BuildAndStart();
  if (server_ == nullptr || bound_port == 0) {
    server_.reset();
    // gRPC does not say why; binding the address the same way does.
    absl::StatusOr<tcp::Fd> probe = ListenTcp(host, port, 1, "--port");
    if (!probe.ok()) return probe.status();
    return absl::UnavailableError(absl::StrCat("cannot serve gRPC on ", host, ":", port));
  }
  if (options.health_port >= 0) {
    absl::StatusOr<int> health = StartHealthServer(options.health_host, options.health_port);
    if (!health.ok()) {
      server_->Shutdown();
      server_.reset();
      return health.status();
    }
    health_port_ = *health;
  }
  SetServing(kLivenessService, engine_->Live());
  SetServing(kReadinessService, engine_->Healthy());
  watchdog_ = std::thread([this] { Watch(); });
  return bound_port;
}

absl::StatusOr<int> GrpcServer::StartHealthServer(const std::string& host, int port) {
  // Nothing but the default health service is registered: no API, no reflection, no keys.
  grpc::ServerBuilder builder;
  int bound = 0;
  builder.AddListeningPort(absl::StrCat(host, ":", port), grpc::InsecureServerCredentials(),
                           &bound);
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  grpc::ResourceQuota quota("hkv-grpc-health");
  quota.SetMaxThreads(8);
  builder.SetResourceQuota(quota);
  builder.SetMaxReceiveMessageSize(4096);
  health_server_ = builder.BuildAndStart();
  if (health_server_ == nullptr || bound == 0) {
    health_server_.reset();
    absl::StatusOr<tcp::Fd> probe = ListenTcp(host, port, 1, "--health-port");
    if (!probe.ok()) return probe.status();
    return absl::UnavailableError(absl::StrCat("cannot serve gRPC health on ", host, ":", port));
  }
  return bound;
}

void GrpcServer::SetServing(const char* service, bool serving) {
  server_->GetHealthCheckService()->SetServingStatus(service, serving);
  if (health_server_ != nullptr) {
    health_server_->GetHealthCheckService()->SetServingStatus(service, serving);
  }
}

void GrpcServer::Watch() {
  bool last_ready = !engine_->Healthy();
  bool last_live = !engine_->Live();
  while (!stop_watch_.load()) {
    const bool ready = engine_->Healthy() && !draining_.load();
    if (ready != last_ready) {
      SetServing(kReadinessService, ready);
      engine_->mutable_metrics()->ready = ready ? 1 : 0;
      if (!ready) HKV_LOG(WARNING) << "readiness: NOT_SERVING";
      last_ready = ready;
    }
    const bool live = engine_->Live();
    if (live != last_live) {
      SetServing(kLivenessService, live);
      if (!live) {
        HKV_LOG(ERROR) << "liveness: NOT_SERVING (the engine loop "
                       << (engine_->IterationRunningFor() > absl::ZeroDuration()
                               ? absl::StrCat("is stuck for ",
                                              absl::FormatDuration(engine_->IterationRunningFor()))
                               : std::string("is not running"))
                       << ")";
      }
      last_live = live;
    }
    absl::SleepFor(absl::Milliseconds(200));
  }
}

void GrpcServer::DrainAndShutdown(absl::Duration timeout) {
  draining_ = true;
  if (server_ != nullptr) SetServing(kReadinessService, false);
  engine_->Drain(timeout);
  Shutdown();
}

void GrpcServer::Shutdown() {
  stop_watch_ = true;
  if (watchdog_.joinable()) watchdog_.join();
  if (server_ != nullptr) {
    server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
    server_->Wait();
    server_.reset();
  }
  if (health_server_ != nullptr) {
    health_server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
    health_server_->Wait();
    health_server_.reset();
  }
}

}  // namespace hkv
