#include "common/exit_watchdog.h"

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <thread>

#include "absl/time/clock.h"

namespace hkv {

void ExitAfter(absl::Duration delay, int code, const std::string& reason) {
  static std::atomic<bool> armed{false};
  if (armed.exchange(true)) return;
  std::thread([delay, code, reason] {
    absl::SleepFor(delay);
    std::fprintf(stderr, "hkv: exiting with status %d: %s\n", code, reason.c_str());
    std::fflush(stderr);
    std::_Exit(code);
  }).detach();
}

}  // namespace hkv
