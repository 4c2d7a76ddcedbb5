#pragma once
// Bounds on one render. A chat template runs on every chat request with client text in it, so
// no template (however written) and no conversation may make a render run long or grow large:
// every string built, every statement, loop iteration and item a filter visits is charged
// here, and the render stops at the first limit with RESOURCE_EXHAUSTED.
//
// Not thread-safe: one RenderBudget per render, on the rendering thread.

#include <cstdint>

#include "absl/status/status.h"

namespace hkv::jinja {

struct RenderLimits {
  int64_t max_output_bytes = 16 << 20;  // The rendered text, and any one string built.
  int64_t max_work_bytes = 256 << 20;   // Bytes of all strings built during the render.
  int64_t max_steps = 2'000'000;        // Statements, expressions, iterations, items visited.
  int max_depth = 64;                   // Nested macro calls and loops.
  int64_t max_range = 100'000;          // range() length (Jinja's sandbox MAX_RANGE).
};

class RenderBudget {
 public:
  explicit RenderBudget(const RenderLimits& limits) : limits_(limits) {}

  const RenderLimits& limits() const { return limits_; }
  // Charges `n` steps.
  absl::Status Step(int64_t n = 1);
  // Charges a string of `n` bytes about to be built (checked against both byte limits).
  absl::Status Bytes(int64_t n);
  // Checks that a string being built (`n` bytes so far) is within max_output_bytes.
  absl::Status CheckSize(int64_t n) const;
  // Enters one level of macro call or loop; Leave() when it ends.
  absl::Status Enter();
  void Leave() { --depth_; }

 private:
  RenderLimits limits_;
  int64_t steps_ = 0;
  int64_t work_bytes_ = 0;
  int depth_ = 0;
};

}  // namespace hkv::jinja
