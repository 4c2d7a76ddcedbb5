#pragma once
// Where this process sits in a multi-node tensor-parallel group: node 0's address, the number
// of nodes and this node's index, from flags or the environment Kubernetes LeaderWorkerSet sets.
// The nodes then join over a gRPC stream (executor/step_channel.h). Thread-safe (pure functions).

#include <cstdint>
#include <cstdlib>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace hkv {

// Where this process sits in a tensor-parallel group.
struct DistLayout {
  std::string leader_host;  // node 0's host name or address; empty for a single node.
  int32_t port = 0;         // node 0's port for joining and steps.
  int32_t world_size = 1;   // number of nodes (processes) in the group.
  int32_t rank = 0;         // this node's index, in [0, world_size); 0 runs the engine.
  // Shared secret a follower presents when it joins (--dist-token / HKV_DIST_TOKEN); node 0
  // refuses a peer whose token differs (compared in constant time). Empty: no token.
  std::string token;
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

}  // namespace hkv
