// `hkv serve` on nodes 1..N-1 of a multi-node group (--world-size > 1, --rank > 0): no gRPC
// server, no engine; this node's GPUs run the steps node 0's engine sends
// (executor/multi_node_group.h). The process exits when the group ends: 0 when node 0 stopped it
// (node 0 drained and exited), 3 when it broke (node 0 vanished, a GPU or NCCL failed), so that
// Kubernetes (LeaderWorkerSet, RecreateGroupOnRestart) restarts the whole group; 1 when it
// could not form. On SIGTERM/SIGINT it keeps running node 0's steps while node 0 drains (pods of
// a group are terminated together) and leaves when node 0 stops it, or after drain_timeout_s +
// 10 s; a second signal ends it at once (node 0 then fails its in-flight requests with
// UNAVAILABLE and exits).

#include <signal.h>

#include <atomic>
#include <cstdlib>
#include <iostream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "common/exit_watchdog.h"
#include "common/logging.h"
#include "server/commands.h"
#include "server/model_setup.h"

namespace hkv {

int RunFollower(const ServerConfig& config, const DistLayout& layout) {
  sigset_t signals = BlockTerminationSignals();

  std::atomic<bool> done{false};
  absl::Status result;
  std::thread node([&] {
    result = RunFollowerNode(config, layout, [](const absl::Status& broken) {
      // Tearing down ranks whose collective lost its peer may block on the GPU.
      ExitAfter(absl::Seconds(15), 3,
                absl::StrCat("the multi-node group broke (", broken.message(),
                             ") and the shutdown did not finish"));
    });
    done = true;
  });
  const timespec tick = {0, 200 * 1000 * 1000};
  bool signalled = false;
  while (!done.load()) {
    const int signal_number = sigtimedwait(&signals, nullptr, &tick);
    if (signal_number <= 0) continue;
    if (signalled) {
      HKV_LOG(INFO) << "signal " << signal_number << " again: leaving the group now";
      std::cerr.flush();
      std::_Exit(0);
    }
    // Kubernetes terminates a group's pods together: node 0 is draining its requests, which
    // still need this node's ranks, and stops the group when done. Keep serving until then.
    signalled = true;
    const absl::Duration wait = absl::Seconds(config.drain_timeout_s + 10);
    HKV_LOG(INFO) << "signal " << signal_number << ": serving node 0's drain, leaving in at most "
                  << wait;
    ExitAfter(wait, 0, "node 0 did not stop the group after SIGTERM");
  }
  node.join();
  if (result.ok()) {
    HKV_LOG(INFO) << "node 0 stopped the group; exiting";
    return 0;
  }
  std::cerr << "hkv serve (node " << layout.rank << "): " << result.message() << "\n";
  // Errors before the first step (bad flags, no GPU, a group that never formed) are start-up
  // failures; later ones mean the group broke.
  return absl::IsInvalidArgument(result) || absl::IsResourceExhausted(result) ||
                 absl::IsDeadlineExceeded(result) || absl::IsFailedPrecondition(result) ||
                 absl::IsNotFound(result)
             ? 1
             : 3;
}

}  // namespace hkv
