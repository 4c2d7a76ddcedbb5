#pragma once
// StepConnection: the TCP link between the leader of a multi-node tensor-parallel group (node 0,
// which runs the engine) and one follower node, carrying framed messages: the group's setup,
// then one step and one answer per engine step (workers/multi_node_worker.h).
//
// Frame: {magic 'HKVS', type, payload length (uint64)} in network byte order, then the payload.
// Joining: a follower connects to the leader's address and sends kHello {version, node,
// world_size, fingerprint}; the leader answers kWelcome, or kError with the reason (wrong
// version, world size or fingerprint, node out of range, duplicate node) and fails as well: a
// group that cannot form must not start serving. Connections that do not speak this protocol
// (a probe, a port scanner) are dropped without failing the leader.
//
// Liveness: TCP keepalive (a vanished host is noticed in ~30 s even while idle) and PeerHungUp()
// (a peer process that exited). Every wait is bounded by its timeout.
//
// Thread-compatible: a connection is used by one thread at a time (the engine thread on the
// leader, the follower's main thread).

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "workers/dist_bootstrap.h"

namespace hkv {

enum class StepMessage : uint32_t {
  kHello = 1,
  kWelcome = 2,
  kSetup = 3,   // leader -> follower: NCCL id and head placement
  kReady = 4,   // follower -> leader: its ranks are up; blocks per rank
  kStart = 5,   // leader -> follower: the group's blocks per rank; steps follow
  kStep = 6,    // leader -> follower: one engine step (workers/step_codec.h)
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

  absl::Status Send(StepMessage type, absl::Span<const uint8_t> payload, absl::Duration timeout);
  // The next message. UNAVAILABLE when the peer closed the connection, DEADLINE_EXCEEDED after
  // `timeout` (absl::InfiniteDuration() waits for ever), DATA_LOSS for a malformed frame.
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
  // True once the peer has closed or reset the connection (does not read).
  bool PeerHungUp() const;
  // The node at the other end (0 on a follower).
  int32_t peer_node() const;

  struct Impl;
  explicit StepConnection(std::unique_ptr<Impl> impl);

 private:
  std::unique_ptr<Impl> impl_;
};

// Leader (layout.rank 0): listens on layout.port until nodes 1..world_size-1 have joined, and
// returns their connections indexed by node - 1. DEADLINE_EXCEEDED names the nodes that never
// came; FAILED_PRECONDITION for a node that does not fit (see the header comment).
absl::StatusOr<std::vector<std::unique_ptr<StepConnection>>> AcceptFollowers(
    const DistLayout& layout, const std::string& fingerprint, absl::Duration timeout);

// Follower (layout.rank > 0): connects to the leader (retrying while it is not up yet) and joins.
absl::StatusOr<std::unique_ptr<StepConnection>> ConnectToLeader(const DistLayout& layout,
                                                                const std::string& fingerprint,
                                                                absl::Duration timeout);

}  // namespace hkv
