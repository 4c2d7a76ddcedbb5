// Node 0's end of the step transport: AcceptFollowers (executor/step_channel.h) starts a gRPC
// server of its own on the --dist-addr port serving StepTransport.Join, admits each follower by
// its hello, and hands the admitted calls to the engine as StepConnections.
//
// Threads: each admitted follower's call holds one gRPC handler thread, which reads into the
// connection's inbox until the call ends and then waits until the connection's owner lets go
// (ServerLink::Release), so that the stream outlives every write. The server lives as long as
// the last connection (shared ownership) and shuts down when it goes.

#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <chrono>
#include <memory>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "common/constant_time.h"
#include "common/logging.h"
#include "executor/step_channel.h"
#include "executor/step_link.h"
#include "hkv/internal/v1/step_transport.grpc.pb.h"

namespace hkv {
namespace {

using internal::v1::Hello;
using internal::v1::NodeMessage;
using internal::v1::StepTransport;
using Stream = grpc::ServerReaderWriter<NodeMessage, NodeMessage>;

grpc::Status ToGrpc(const absl::Status& s) {
  return grpc::Status(static_cast<grpc::StatusCode>(s.code()), std::string(s.message()));
}

// One admitted follower's call, shared by its handler thread (reads, then waits) and its
// StepConnection (writes, then releases).
struct ServerLink {
  explicit ServerLink(Stream* s) : stream(s) {}

  bool Write(const NodeMessage& m) {
    absl::MutexLock lock(&mu);
    return !released && stream->Write(m);
  }
  // Ends the writes; the handler then finishes the call with `status`.
  void Release(grpc::Status status) {
    absl::MutexLock lock(&mu);
    if (released) return;
    released = true;
    final_status = std::move(status);
  }
  grpc::Status AwaitRelease() {
    absl::MutexLock lock(&mu);
    mu.Await(absl::Condition(&released));
    return final_status;
  }

  Stream* const stream;  // valid until the handler returns, which waits for Release
  StepInbox inbox;
  absl::Mutex mu;  // serializes writes; held by the handler until its welcome is written
  bool released ABSL_GUARDED_BY(mu) = false;
  grpc::Status final_status ABSL_GUARDED_BY(mu);
};

// Which followers have joined; refuses those that do not fit (and then the whole group).
class Rendezvous {
 public:
  Rendezvous(const DistLayout& layout, std::string fingerprint)
      : layout_(layout), fingerprint_(std::move(fingerprint)), links_(layout.world_size - 1) {}

  // Admits the follower that said `hello`, or says why not. A follower that does not fit fails
  // the group (it must not start serving); one arriving after the group formed is only refused.
  absl::Status Admit(const Hello& hello, std::shared_ptr<ServerLink> link) {
    absl::MutexLock lock(&mu_);
    if (!open_) {
      return absl::FailedPreconditionError(
          absl::StrCat("the multi-node group on port ", layout_.port, " is not taking members"));
    }
    const std::string problem = Problem(hello);
    if (!problem.empty()) {
      const absl::Status s =
          absl::FailedPreconditionError(absl::StrCat("multi-node group cannot form: ", problem));
      if (failure_.ok()) failure_ = s;
      return s;
    }
    links_[hello.node() - 1] = std::move(link);
    ++joined_;
    return absl::OkStatus();
  }

  // Waits until every follower joined (then stops taking members), one did not fit, or
  // `timeout` passed.
  absl::StatusOr<std::vector<std::shared_ptr<ServerLink>>> Await(absl::Duration timeout) {
    absl::MutexLock lock(&mu_);
    mu_.AwaitWithTimeout(absl::Condition(this, &Rendezvous::Settled), timeout);
    open_ = false;
    if (!failure_.ok()) return failure_;
    if (joined_ == layout_.world_size - 1) return links_;
    std::vector<int32_t> missing;
    for (size_t i = 0; i < links_.size(); ++i) {
      if (links_[i] == nullptr) missing.push_back(static_cast<int32_t>(i) + 1);
    }
    return absl::DeadlineExceededError(absl::StrCat(
        "multi-node group: node(s) ", absl::StrJoin(missing, ", "), " did not join port ",
        layout_.port, " within ", absl::FormatDuration(timeout)));
  }

  // Stops taking members; returns those admitted.
  std::vector<std::shared_ptr<ServerLink>> Close() {
    absl::MutexLock lock(&mu_);
    open_ = false;
    return links_;
  }

 private:
  bool Settled() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return !failure_.ok() || joined_ == layout_.world_size - 1;
  }
  std::string Problem(const Hello& h) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (h.version() != kStepProtocolVersion) {
      return absl::StrCat("protocol version ", h.version(), ", the leader speaks ",
                          kStepProtocolVersion);
    }
    if (h.world_size() != layout_.world_size) {
      return absl::StrCat("world size ", h.world_size(), ", the leader's is ", layout_.world_size);
    }
    if (h.node() < 1 || h.node() >= h.world_size()) {
      return absl::StrCat("node ", h.node(), " is outside 1..", layout_.world_size - 1);
    }
    if (links_[h.node() - 1] != nullptr) return absl::StrCat("node ", h.node(), " joined twice");
    if (h.fingerprint() != fingerprint_) {
      return absl::StrCat("node ", h.node(), " runs a different configuration (",
                          h.fingerprint().substr(0, kMaxReasonBytes), ") from the leader's (",
                          fingerprint_, ")");
    }
    return "";
  }

  const DistLayout layout_;
  const std::string fingerprint_;
  mutable absl::Mutex mu_;
  std::vector<std::shared_ptr<ServerLink>> links_ ABSL_GUARDED_BY(mu_);  // by node - 1
  int32_t joined_ ABSL_GUARDED_BY(mu_) = 0;
  bool open_ ABSL_GUARDED_BY(mu_) = true;
  absl::Status failure_ ABSL_GUARDED_BY(mu_);
};

class TransportService final : public StepTransport::Service {
 public:
  TransportService(Rendezvous* rendezvous, std::string token)
      : rendezvous_(rendezvous), token_(std::move(token)) {}

  grpc::Status Join(grpc::ServerContext* context, Stream* stream) override {
    // A peer without the group's token is refused before its first message is read, and
    // without touching the group (anyone who reaches the port could send a hello).
    if (!token_.empty()) {
      auto it = context->client_metadata().find(kDistTokenHeader);
      const std::string_view presented =
          it == context->client_metadata().end()
              ? std::string_view()
              : std::string_view(it->second.data(), it->second.size());
      if (!ConstantTimeEquals(presented, token_)) {
        HKV_LOG(WARNING) << "multi-node: refused a peer from " << context->peer()
                         << " with a wrong or missing --dist-token";
        return grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                            "wrong or missing multi-node token (--dist-token / HKV_DIST_TOKEN)");
      }
    }
    NodeMessage first;
    // Anything but a hello first is not an hkv node: refused without touching the group.
    if (!stream->Read(&first) || first.type() != static_cast<uint32_t>(StepMessage::kHello) ||
        !first.has_hello()) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                          "the first message of a Join call must be a hello");
    }
    auto link = std::make_shared<ServerLink>(stream);
    {
      absl::MutexLock hold(&link->mu);  // the leader's first write waits for the welcome
      const absl::Status admitted = rendezvous_->Admit(first.hello(), link);
      if (!admitted.ok()) return ToGrpc(admitted);
      NodeMessage welcome;
      welcome.set_type(static_cast<uint32_t>(StepMessage::kWelcome));
      stream->Write(welcome);
    }
    const int32_t node = first.hello().node();
    NodeMessage m;
    while (stream->Read(&m)) link->inbox.Push({m.type(), std::move(*m.mutable_payload())});
    link->inbox.Close(
        absl::UnavailableError(absl::StrCat("node ", node, " closed its connection")));
    return link->AwaitRelease();
  }

 private:
  Rendezvous* const rendezvous_;
  const std::string token_;
};

// The leader's gRPC server: lives until the last connection (and AcceptFollowers) lets go.
class TransportServer {
 public:
  TransportServer(const DistLayout& layout, const std::string& fingerprint)
      : rendezvous_(layout, fingerprint), service_(&rendezvous_, layout.token) {}
  ~TransportServer() {
    for (auto& link : rendezvous_.Close()) {
      if (link != nullptr) link->Release(grpc::Status::OK);
    }
    // Calls that have ended still deliver what was written to them (a kStop, a kError, a
    // refusal's status) within the grace period; strays still waiting for their first message
    // are cancelled at its end.
    if (server_ != nullptr) {
      server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
    }
  }

  // Listens on every interface at `port`, retrying while the port is in use.
  absl::Status Start(int port, absl::Time deadline) {
    for (;;) {
      grpc::ServerBuilder builder;
      int bound = 0;
      builder.AddListeningPort(StepAddress("::", port), grpc::InsecureServerCredentials(), &bound);
      builder.RegisterService(&service_);
      builder.SetMaxReceiveMessageSize(kMaxMessageBytes);
      builder.SetMaxSendMessageSize(kMaxMessageBytes);
      // A second leader on the same port must fail, not share it.
      builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
      builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIME_MS, kKeepaliveTimeMs);
      builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, kKeepaliveTimeoutMs);
      builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
      builder.AddChannelArgument(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);
      builder.AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS,
                                 kKeepaliveTimeMs / 2);
      builder.AddChannelArgument(GRPC_ARG_HTTP2_MAX_PING_STRIKES, 0);
      server_ = builder.BuildAndStart();
      if (server_ != nullptr && bound == port) return absl::OkStatus();
      server_.reset();
      if (absl::Now() >= deadline) {
        return absl::UnavailableError(absl::StrCat("cannot listen on port ", port,
                                                   " for the multi-node group (is it in use?)"));
      }
      absl::SleepFor(absl::Milliseconds(100));
    }
  }

  Rendezvous& rendezvous() { return rendezvous_; }

 private:
  Rendezvous rendezvous_;
  TransportService service_;
  std::unique_ptr<grpc::Server> server_;  // last: shut down before the service goes
};

// Node 0's end of one follower's call.
class ServerEnd : public StepConnection::Impl {
 public:
  ServerEnd(std::shared_ptr<ServerLink> link, std::shared_ptr<TransportServer> server)
      : link_(std::move(link)), server_(std::move(server)) {}
  ~ServerEnd() override { link_->Release(grpc::Status::OK); }

  bool Write(const NodeMessage& m) override { return link_->Write(m); }
  StepInbox& inbox() override { return link_->inbox; }

 private:
  std::shared_ptr<ServerLink> link_;
  std::shared_ptr<TransportServer> server_;  // keeps the call's server up
};

}  // namespace

absl::StatusOr<std::vector<std::unique_ptr<StepConnection>>> AcceptFollowers(
    const DistLayout& layout, const std::string& fingerprint, absl::Duration timeout) {
  if (layout.rank != 0 || layout.world_size < 2) {
    return absl::InvalidArgumentError("AcceptFollowers runs on node 0 of a group of 2 or more");
  }
  timeout = std::clamp(timeout, absl::ZeroDuration(), absl::Hours(24 * 365));
  const absl::Time deadline = absl::Now() + timeout;
  auto server = std::make_shared<TransportServer>(layout, fingerprint);
  if (absl::Status s = server->Start(layout.port, deadline); !s.ok()) return s;
  absl::StatusOr<std::vector<std::shared_ptr<ServerLink>>> links =
      server->rendezvous().Await(timeout);
  if (!links.ok()) {
    // The followers that joined hear why; `server` going away then ends their calls.
    NodeMessage error;
    error.set_type(static_cast<uint32_t>(StepMessage::kError));
    error.set_payload(std::string(links.status().message()).substr(0, kMaxReasonBytes));
    for (auto& link : server->rendezvous().Close()) {
      if (link != nullptr) link->Write(error);
    }
    return links.status();
  }
  std::vector<std::unique_ptr<StepConnection>> followers;
  for (size_t i = 0; i < links->size(); ++i) {
    auto end = std::make_unique<ServerEnd>((*links)[i], server);
    end->peer_node = static_cast<int32_t>(i) + 1;
    followers.push_back(std::make_unique<StepConnection>(std::move(end)));
  }
  return followers;
}

}  // namespace hkv
