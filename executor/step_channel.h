#pragma once
// StepConnection: the link between the leader of a multi-node tensor-parallel group (node 0,
// which runs the engine) and one follower node, carrying typed messages: the group's setup, then
// one step and one answer per engine step (executor/multi_node_worker.h).
//
// Transport: one gRPC bidirectional stream per follower (hkv.internal.v1.StepTransport.Join in
// proto/hkv/internal/v1/step_transport.proto), on a gRPC server of node 0's own at the
// --dist-addr port (not the public API server). A message is {type, payload}: the payload is
// executor/step_codec.h bytes in a `bytes` field (bench/README.md "Step transport" measures why
// not protobuf-native steps).
//
// Joining: a follower connects (retrying while node 0 is not up yet) and its first message is
// kHello {version, node, world_size, fingerprint}; node 0 answers kWelcome, or ends the call with
// FAILED_PRECONDITION and the reason (wrong version, world size or fingerprint, node out of
// range, duplicate node) and fails as well: a group that cannot form must not start serving.
// Connections that do not speak this protocol (a probe, a port scanner, a call whose first
// message is no hello) are refused without failing the leader.
//
// Liveness: each connection's reader (a gRPC handler thread on node 0, a thread of its own on a
// follower) reads ahead into an inbox (executor/step_inbox.h); a failed read, which is how a
// peer process that exited shows, marks the connection hung up (PeerHungUp). gRPC keepalive
// pings notice a vanished host (no FIN) in about 20 s even while idle. Waits for messages are
// bounded by their timeouts; a write waits only for HTTP/2 flow control, which the peer's reader
// always drains, and fails once the stream is broken.
//
// Thread-compatible: a connection is used by one thread at a time (the engine thread on the
// leader, the follower's main thread); PeerHungUp may be called from any thread.

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "executor/dist_bootstrap.h"

namespace hkv {

enum class StepMessage : uint32_t {
  kHello = 1,
  kWelcome = 2,
  kSetup = 3,   // leader -> follower: NCCL id and head placement
  kReady = 4,   // follower -> leader: its ranks are up; blocks per rank
  kStart = 5,   // leader -> follower: the group's blocks per rank; steps follow
  kStep = 6,    // leader -> follower: one engine step (executor/step_codec.h)
  kResult = 7,  // follower -> leader: its answer
  kStop = 8,    // leader -> follower: shut down cleanly
  kError = 9,   // either way: the payload is the reason; the sender gives up
};

class StepConnection {
 public:
  // Largest payload accepted (a step of 256 sequences over 32k-token prompts is a few MB).
  static constexpr uint64_t kMaxPayloadBytes = 1ULL << 30;

  ~StepConnection();
  StepConnection(const StepConnection&) = delete;
  StepConnection& operator=(const StepConnection&) = delete;

  // Sends one message. UNAVAILABLE once the stream is broken, INVALID_ARGUMENT past
  // kMaxPayloadBytes. `timeout` is not enforced here: see "Liveness" above.
  absl::Status Send(StepMessage type, absl::Span<const uint8_t> payload, absl::Duration timeout);
  // The next message. UNAVAILABLE (or the call's gRPC status) when the peer closed the
  // connection, DEADLINE_EXCEEDED after `timeout` (absl::InfiniteDuration() waits for ever),
  // DATA_LOSS for an unknown message type.
  struct Message {
    StepMessage type;
    std::vector<uint8_t> payload;
  };
  absl::StatusOr<Message> Receive(absl::Duration timeout);
  // Receives a message of type `want`; a kError from the peer becomes UNAVAILABLE with its reason,
  // any other type FAILED_PRECONDITION.
  absl::StatusOr<std::vector<uint8_t>> Expect(StepMessage want, absl::Duration timeout);
  // Best effort: tells the peer why this side gives up (waits at most a second).
  void SendError(const std::string& reason);
  // True once a read from the peer has failed (it closed the call, exited or was lost).
  bool PeerHungUp() const;
  // The node at the other end (0 on a follower).
  int32_t peer_node() const;

  struct Impl;  // executor/step_link.h
  explicit StepConnection(std::unique_ptr<Impl> impl);

 private:
  std::unique_ptr<Impl> impl_;
};

// Leader (layout.rank 0): serves StepTransport on layout.port (every interface; retrying while
// the port is in use) until nodes 1..world_size-1 have joined, and
// returns their connections indexed by node - 1. DEADLINE_EXCEEDED names the nodes that never
// came; FAILED_PRECONDITION for a node that does not fit (see the header comment).
absl::StatusOr<std::vector<std::unique_ptr<StepConnection>>> AcceptFollowers(
    const DistLayout& layout, const std::string& fingerprint, absl::Duration timeout);

// Follower (layout.rank > 0): connects to the leader (retrying while it is not up yet) and joins.
// The connection keeps node 0's server up for as long as it lives (leader side) or its own
// channel (follower side).
absl::StatusOr<std::unique_ptr<StepConnection>> ConnectToLeader(const DistLayout& layout,
                                                                const std::string& fingerprint,
                                                                absl::Duration timeout);

}  // namespace hkv
