#include "workers/step_channel.h"

#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status_macros.h"
#include "workers/tcp_socket.h"

namespace hkv {
namespace {

using tcp::Deadline;
using tcp::Fd;
using tcp::GetU32;
using tcp::PutU32;

constexpr uint32_t kFrameMagic = 0x484B5653;  // "HKVS"
// 2: a step's sequences carry only their sampler settings (StepSampling), no stop lists.
constexpr uint32_t kProtocolVersion = 2;
constexpr size_t kHeaderBytes = 16;
constexpr size_t kMaxReasonBytes = 4096;
// Keepalive: a follower or leader whose host vanished is noticed after ~10 + 3 * 5 s of silence.
constexpr absl::Duration kKeepaliveIdle = absl::Seconds(10);
constexpr absl::Duration kKeepaliveInterval = absl::Seconds(5);
// How long one joining connection may take to say hello before it is dropped.
constexpr absl::Duration kHelloTimeout = absl::Seconds(5);

std::vector<uint8_t> Hello(int32_t node, int32_t world, const std::string& fingerprint) {
  std::vector<uint8_t> out;
  PutU32(kProtocolVersion, &out);
  PutU32(static_cast<uint32_t>(node), &out);
  PutU32(static_cast<uint32_t>(world), &out);
  out.insert(out.end(), fingerprint.begin(), fingerprint.end());
  return out;
}

std::string AsText(const std::vector<uint8_t>& bytes) {
  return std::string(bytes.begin(), bytes.begin() + std::min(bytes.size(), kMaxReasonBytes));
}

}  // namespace

struct StepConnection::Impl {
  Fd fd;
  int32_t peer_node = -1;
};

StepConnection::StepConnection(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
int32_t StepConnection::peer_node() const { return impl_->peer_node; }
StepConnection::~StepConnection() = default;

absl::Status StepConnection::Send(StepMessage type, absl::Span<const uint8_t> payload,
                                  absl::Duration timeout) {
  std::vector<uint8_t> header;
  header.reserve(kHeaderBytes);
  PutU32(kFrameMagic, &header);
  PutU32(static_cast<uint32_t>(type), &header);
  const uint64_t n = payload.size();
  PutU32(static_cast<uint32_t>(n >> 32), &header);
  PutU32(static_cast<uint32_t>(n), &header);
  const Deadline deadline(timeout);
  HKV_RETURN_IF_ERROR(tcp::WriteAll(impl_->fd.get(), header.data(), header.size(), deadline));
  return tcp::WriteAll(impl_->fd.get(), payload.data(), payload.size(), deadline);
}

absl::StatusOr<StepConnection::Message> StepConnection::Receive(absl::Duration timeout) {
  const Deadline deadline(timeout);
  uint8_t header[kHeaderBytes];
  HKV_RETURN_IF_ERROR(
      tcp::ReadAll(impl_->fd.get(), header, kHeaderBytes, deadline, "waiting for a message"));
  if (GetU32(header) != kFrameMagic) {
    return absl::DataLossError("the peer sent something that is not an hkv step frame");
  }
  const uint32_t type = GetU32(header + 4);
  const uint64_t n = (uint64_t{GetU32(header + 8)} << 32) | GetU32(header + 12);
  if (type < static_cast<uint32_t>(StepMessage::kHello) ||
      type > static_cast<uint32_t>(StepMessage::kError)) {
    return absl::DataLossError(absl::StrCat("unknown step message type ", type));
  }
  if (n > kMaxPayloadBytes) {
    return absl::DataLossError(absl::StrCat("step message of ", n, " bytes exceeds the limit"));
  }
  Message m{static_cast<StepMessage>(type), std::vector<uint8_t>(n)};
  HKV_RETURN_IF_ERROR(
      tcp::ReadAll(impl_->fd.get(), m.payload.data(), n, deadline, "receiving a message"));
  return m;
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

bool StepConnection::PeerHungUp() const { return tcp::PeerHungUp(impl_->fd.get()); }

absl::StatusOr<std::vector<std::unique_ptr<StepConnection>>> AcceptFollowers(
    const DistLayout& layout, const std::string& fingerprint, absl::Duration timeout) {
  if (layout.rank != 0 || layout.world_size < 2) {
    return absl::InvalidArgumentError("AcceptFollowers runs on node 0 of a group of 2 or more");
  }
  const Deadline deadline(timeout);
  HKV_ASSIGN_OR_RETURN(Fd listener, tcp::Listen(layout.port, deadline));
  std::vector<std::unique_ptr<StepConnection>> followers(layout.world_size - 1);
  int32_t joined = 0;
  auto fail = [&](const absl::Status& s) {
    for (auto& f : followers) {
      if (f != nullptr) f->SendError(std::string(s.message()));
    }
    return s;
  };
  while (joined < layout.world_size - 1) {
    absl::StatusOr<Fd> fd = tcp::Accept(listener, deadline);
    if (!fd.ok()) {
      if (!absl::IsDeadlineExceeded(fd.status())) return fail(fd.status());
      std::vector<int32_t> missing;
      for (size_t i = 0; i < followers.size(); ++i) {
        if (followers[i] == nullptr) missing.push_back(static_cast<int32_t>(i) + 1);
      }
      return fail(absl::DeadlineExceededError(absl::StrCat(
          "multi-node group: node(s) ", absl::StrJoin(missing, ", "), " did not join port ",
          layout.port, " within ", absl::FormatDuration(timeout))));
    }
    tcp::TuneForSteps(fd->get(), kKeepaliveIdle, kKeepaliveInterval);
    auto impl = std::make_unique<StepConnection::Impl>();
    impl->fd = std::move(*fd);
    StepConnection::Impl* raw = impl.get();  // node unknown until the hello
    auto conn = std::make_unique<StepConnection>(std::move(impl));
    absl::StatusOr<StepConnection::Message> hello = conn->Receive(kHelloTimeout);
    if (!hello.ok() || hello->type != StepMessage::kHello || hello->payload.size() < 12) {
      continue;  // not an hkv node (or one that gave up): drop it
    }
    const uint8_t* p = hello->payload.data();
    const uint32_t version = GetU32(p), node = GetU32(p + 4), world = GetU32(p + 8);
    const std::string theirs(hello->payload.begin() + 12, hello->payload.end());
    std::string problem;
    if (version != kProtocolVersion) {
      problem =
          absl::StrCat("protocol version ", version, ", the leader speaks ", kProtocolVersion);
    } else if (static_cast<int32_t>(world) != layout.world_size) {
      problem = absl::StrCat("world size ", world, ", the leader's is ", layout.world_size);
    } else if (node < 1 || node >= world) {
      problem = absl::StrCat("node ", node, " is outside 1..", layout.world_size - 1);
    } else if (followers[node - 1] != nullptr) {
      problem = absl::StrCat("node ", node, " joined twice");
    } else if (theirs != fingerprint) {
      problem = absl::StrCat("node ", node, " runs a different configuration (", theirs,
                             ") from the leader's (", fingerprint, ")");
    }
    if (!problem.empty()) {
      const absl::Status s =
          absl::FailedPreconditionError(absl::StrCat("multi-node group cannot form: ", problem));
      conn->SendError(std::string(s.message()));
      return fail(s);
    }
    raw->peer_node = static_cast<int32_t>(node);
    HKV_RETURN_IF_ERROR(conn->Send(StepMessage::kWelcome, {}, absl::Seconds(5)));
    followers[node - 1] = std::move(conn);
    ++joined;
  }
  return followers;
}

absl::StatusOr<std::unique_ptr<StepConnection>> ConnectToLeader(const DistLayout& layout,
                                                                const std::string& fingerprint,
                                                                absl::Duration timeout) {
  if (layout.rank < 1 || layout.rank >= layout.world_size) {
    return absl::InvalidArgumentError("ConnectToLeader runs on nodes 1..world_size-1");
  }
  const Deadline deadline(timeout);
  const std::string where = tcp::FormatAddress(layout.leader_host, layout.port);
  absl::StatusOr<Fd> fd = tcp::ConnectWithRetry(layout.leader_host, layout.port, deadline);
  if (!fd.ok()) {
    return absl::Status(fd.status().code(), absl::StrCat("cannot reach the leader at ", where, ": ",
                                                         fd.status().message()));
  }
  tcp::TuneForSteps(fd->get(), kKeepaliveIdle, kKeepaliveInterval);
  auto impl = std::make_unique<StepConnection::Impl>();
  impl->fd = std::move(*fd);
  impl->peer_node = 0;
  auto conn = std::make_unique<StepConnection>(std::move(impl));
  HKV_RETURN_IF_ERROR(conn->Send(
      StepMessage::kHello, Hello(layout.rank, layout.world_size, fingerprint), absl::Seconds(5)));
  absl::StatusOr<std::vector<uint8_t>> welcome =
      conn->Expect(StepMessage::kWelcome, std::max(absl::Seconds(1), timeout));
  if (!welcome.ok()) {
    return absl::Status(welcome.status().code(), absl::StrCat("joining the leader at ", where, ": ",
                                                              welcome.status().message()));
  }
  return conn;
}

}  // namespace hkv
