#include "executor/step_channel.h"

#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <chrono>
#include <thread>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "common/status_macros.h"
#include "executor/step_link.h"
#include "hkv/internal/v1/step_transport.grpc.pb.h"

namespace hkv {
namespace {

using internal::v1::NodeMessage;
using internal::v1::StepTransport;

std::chrono::system_clock::time_point ToChrono(absl::Time t) {
  return std::chrono::system_clock::now() + absl::ToChronoNanoseconds(t - absl::Now());
}

// A follower's end: a client call on a channel of its own, read by its own thread.
class ClientEnd : public StepConnection::Impl {
 public:
  ClientEnd(std::shared_ptr<grpc::Channel> channel, const std::string& token)
      : channel_(std::move(channel)), stub_(StepTransport::NewStub(channel_)) {
    if (!token.empty()) context_.AddMetadata(kDistTokenHeader, token);
    stream_ = stub_->Join(&context_);
    reader_ = std::thread([this] { ReadLoop(); });
  }
  ~ClientEnd() override {
    context_.TryCancel();  // node 0 sees the call end, as when this process exits
    reader_.join();
  }

  bool Write(const NodeMessage& m) override {
    absl::MutexLock lock(&mu_);
    return !finished_ && stream_->Write(m);
  }
  StepInbox& inbox() override { return inbox_; }

 private:
  void ReadLoop() {
    NodeMessage m;
    while (stream_->Read(&m)) inbox_.Push({m.type(), std::move(*m.mutable_payload())});
    grpc::Status status;
    {
      absl::MutexLock lock(&mu_);
      finished_ = true;
      status = stream_->Finish();
    }
    inbox_.Close(CloseStatus(status));
  }

  // Node 0's refusals keep their code (a group that never formed); anything else means node 0
  // went away or the connection broke, which is UNAVAILABLE whatever gRPC called it.
  static absl::Status CloseStatus(const grpc::Status& s) {
    if (s.ok()) return absl::UnavailableError("the leader closed the connection");
    const auto code = static_cast<absl::StatusCode>(s.error_code());
    if (code == absl::StatusCode::kFailedPrecondition ||
        code == absl::StatusCode::kInvalidArgument || code == absl::StatusCode::kUnauthenticated) {
      return absl::Status(code, s.error_message());
    }
    return absl::UnavailableError(
        absl::StrCat("the connection to the leader broke: ", s.error_message()));
  }

  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<StepTransport::Stub> stub_;
  grpc::ClientContext context_;
  std::unique_ptr<grpc::ClientReaderWriter<NodeMessage, NodeMessage>> stream_;
  StepInbox inbox_;
  absl::Mutex mu_;  // serializes writes with each other and with Finish
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  std::thread reader_;  // last: starts once the members above exist
};

std::string AsText(const std::vector<uint8_t>& bytes) {
  return std::string(bytes.begin(), bytes.begin() + std::min(bytes.size(), kMaxReasonBytes));
}

}  // namespace

std::string StepAddress(const std::string& host, int port) {
  const bool v6 = host.find(':') != std::string::npos && host.front() != '[';
  return v6 ? absl::StrCat("[", host, "]:", port) : absl::StrCat(host, ":", port);
}

StepConnection::StepConnection(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
int32_t StepConnection::peer_node() const { return impl_->peer_node; }
StepConnection::~StepConnection() = default;

absl::Status StepConnection::Send(StepMessage type, absl::Span<const uint8_t> payload,
                                  absl::Duration timeout) {
  if (payload.size() > kMaxPayloadBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("step message of ", payload.size(), " bytes exceeds the limit"));
  }
  NodeMessage m;
  m.set_type(static_cast<uint32_t>(type));
  m.set_payload(payload.data(), payload.size());
  if (!impl_->Write(m)) {
    return absl::UnavailableError(absl::StrCat("node ", peer_node(), " closed its connection"));
  }
  return absl::OkStatus();
}

absl::StatusOr<StepConnection::Message> StepConnection::Receive(absl::Duration timeout) {
  HKV_ASSIGN_OR_RETURN(StepInboxMessage m, impl_->inbox().Pop(timeout, "waiting for a message"));
  if (m.type < static_cast<uint32_t>(StepMessage::kHello) ||
      m.type > static_cast<uint32_t>(StepMessage::kError)) {
    return absl::DataLossError(absl::StrCat("unknown step message type ", m.type));
  }
  return Message{static_cast<StepMessage>(m.type),
                 std::vector<uint8_t>(m.payload.begin(), m.payload.end())};
}

absl::StatusOr<std::vector<uint8_t>> StepConnection::Expect(StepMessage want,
                                                            absl::Duration timeout) {
  HKV_ASSIGN_OR_RETURN(Message m, Receive(timeout));
  if (m.type == want) return std::move(m.payload);
  if (m.type == StepMessage::kError) {
    return absl::UnavailableError(absl::StrCat("node ", peer_node(), ": ", AsText(m.payload)));
  }
  return absl::FailedPreconditionError(absl::StrCat("node ", peer_node(), " sent message type ",
                                                    static_cast<uint32_t>(m.type), ", expected ",
                                                    static_cast<uint32_t>(want)));
}

void StepConnection::SendError(const std::string& reason) {
  const std::string r = reason.substr(0, kMaxReasonBytes);
  (void)Send(StepMessage::kError,
             absl::Span<const uint8_t>(reinterpret_cast<const uint8_t*>(r.data()), r.size()),
             absl::Seconds(1));
}

bool StepConnection::PeerHungUp() const { return impl_->inbox().closed(); }

absl::StatusOr<std::unique_ptr<StepConnection>> ConnectToLeader(const DistLayout& layout,
                                                                const std::string& fingerprint,
                                                                absl::Duration timeout) {
  if (layout.rank < 1 || layout.rank >= layout.world_size) {
    return absl::InvalidArgumentError("ConnectToLeader runs on nodes 1..world_size-1");
  }
  timeout = std::clamp(timeout, absl::ZeroDuration(), absl::Hours(24 * 365));
  const absl::Time deadline = absl::Now() + timeout;
  const std::string where = StepAddress(layout.leader_host, layout.port);
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(kMaxMessageBytes);
  args.SetMaxSendMessageSize(kMaxMessageBytes);
  args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, kKeepaliveTimeMs);
  args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, kKeepaliveTimeoutMs);
  args.SetInt(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  args.SetInt(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);
  // Node 0 may not listen yet (or its name not resolve yet): retry every 100 ms to 1 s.
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
  // A connection of its own, even when another follower in this process joins the same leader.
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  std::shared_ptr<grpc::Channel> channel =
      grpc::CreateCustomChannel(where, grpc::InsecureChannelCredentials(), args);
  if (!channel->WaitForConnected(ToChrono(deadline))) {
    return absl::DeadlineExceededError(absl::StrCat("cannot reach the leader at ", where,
                                                    " within ", absl::FormatDuration(timeout)));
  }
  auto end = std::make_unique<ClientEnd>(std::move(channel), layout.token);
  end->peer_node = 0;
  NodeMessage hello;
  hello.set_type(static_cast<uint32_t>(StepMessage::kHello));
  hello.mutable_hello()->set_version(kStepProtocolVersion);
  hello.mutable_hello()->set_node(layout.rank);
  hello.mutable_hello()->set_world_size(layout.world_size);
  hello.mutable_hello()->set_fingerprint(fingerprint);
  // A write to a call node 0 already ended fails; its reason is then the inbox's.
  (void)end->Write(hello);
  auto conn = std::make_unique<StepConnection>(std::move(end));
  absl::StatusOr<std::vector<uint8_t>> welcome =
      conn->Expect(StepMessage::kWelcome, std::max(absl::Seconds(1), deadline - absl::Now()));
  if (!welcome.ok()) {
    return absl::Status(welcome.status().code(), absl::StrCat("joining the leader at ", where, ": ",
                                                              welcome.status().message()));
  }
  return conn;
}

}  // namespace hkv
