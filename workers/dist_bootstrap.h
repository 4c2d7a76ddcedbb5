#pragma once
// Multi-node bootstrap for a tensor-parallel group: where the ranks are, and a plain-TCP
// rendezvous that hands every rank the same opaque blob.
//
// Why: the ranks of one tensor-parallel group (one process per node under a Kubernetes
// LeaderWorkerSet) must all hold the same ncclUniqueId (128 bytes, made by rank 0 with
// ncclGetUniqueId) before they may call ncclCommInitRank. NCCL leaves the distribution of that id
// to the caller; TcpRendezvous does it over plain TCP sockets with no dependency beyond POSIX, and
// ResolveDistLayout works out the rank layout from flags or the LeaderWorkerSet environment.
//
// Protocol (all integers are uint32 in network byte order):
//   rank r -> rank 0: hello {magic 'HKVB', version, rank, world_size}
//   rank 0 -> rank r: reply {magic 'HKVR', status (0 = ok, 1 = error), length} + length bytes
//                     (the blob when ok, an error message otherwise)
//   rank r -> rank 0: ack   {magic 'HKVA'}                (only after an ok reply)
// Rank 0 sends the blob only once every rank has said hello, and returns only once every rank
// has acked, so a successful Exchange on rank 0 means all ranks have the blob. (The converse
// does not hold: a rank that got the blob succeeds even if rank 0 then fails waiting for another
// rank's ack; rank 0's failure is what the caller must act on.)
//
// Thread-safety: all functions here are free-standing and keep no shared state; Exchange is a
// blocking call that is safe to run from several threads at once with different layouts (the
// tests run whole groups as threads of one process).

#include <cstdint>
#include <cstdlib>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace hkv {

// Where this process sits in a tensor-parallel group.
struct DistLayout {
  std::string leader_host;  // rank 0's host name or address; empty for a single node.
  int32_t port = 0;         // rank 0's rendezvous port.
  int32_t world_size = 1;   // number of ranks (processes) in the group.
  int32_t rank = 0;         // this process's rank, in [0, world_size).
};

// Resolves the layout. Each flag wins when set; otherwise the LeaderWorkerSet variable is used:
//   dist_addr_flag  ("" = unset)  else LWS_LEADER_ADDRESS: HOST, HOST:PORT, [IPV6] or [IPV6]:PORT
//                                 (a bare IPv6 address with several ':' is taken as a host with
//                                 no port); no port means default_port.
//   world_size_flag (0 = unset)   else LWS_GROUP_SIZE, else 1.
//   rank_flag       (-1 = unset)  else LWS_WORKER_INDEX, else 0.
// A single node (world_size 1) needs nothing else. InvalidArgument, naming the flag or variable,
// for: unparsable numbers, world_size < 1, rank outside [0, world_size), world_size > 1 with no
// leader address, a port outside 1..65535. `getenv_fn` stands in for std::getenv in tests.
absl::StatusOr<DistLayout> ResolveDistLayout(
    const std::string& dist_addr_flag, int32_t world_size_flag, int32_t rank_flag,
    const std::function<const char*(const char*)>& getenv_fn = [](const char* name) -> const char* {
      return std::getenv(name);
    },
    int32_t default_port = 29500);

// TCP rendezvous of one group; see the protocol above.
class TcpRendezvous {
 public:
  // Largest blob Exchange will carry.
  static constexpr size_t kMaxBlobBytes = 1 << 20;

  // Rank 0 listens on all interfaces at layout.port, waits for ranks 1..world_size-1, sends each
  // `blob_from_rank0`, waits for every ack and returns its own blob. Other ranks connect to
  // leader_host:port (retrying every ~100 ms while rank 0 is not up yet), say hello, and return
  // the blob they receive; they ignore `blob_from_rank0`. world_size 1 returns the blob without
  // touching the network. Every wait is bounded by `timeout` (overall, not per step), except
  // the resolution of a non-numeric leader_host, which is up to the system resolver.
  // Errors: InvalidArgument for a bad layout or an oversized blob; DeadlineExceeded naming the
  // ranks that never joined (rank 0) or rank 0's address (others); FailedPrecondition when a
  // peer's hello does not fit the layout (wrong world size or version, rank out of range,
  // duplicate rank) -- rank 0 then fails and tells every connected rank why, so they fail too;
  // Unavailable when a peer drops the connection mid-protocol; Internal for socket failures.
  // Connections that are not hkv (a probe, a bad magic) are dropped and do not fail rank 0.
  static absl::StatusOr<std::vector<uint8_t>> Exchange(const DistLayout& layout,
                                                       const std::vector<uint8_t>& blob_from_rank0,
                                                       absl::Duration timeout);

  // A TCP port that was free on 127.0.0.1 a moment ago (bind port 0, read it, close). For tests;
  // another process may take it before it is used.
  static absl::StatusOr<int> PickFreePort();
};

}  // namespace hkv
