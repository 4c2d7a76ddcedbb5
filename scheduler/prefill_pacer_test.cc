// PrefillPacer on its own: the fit of per-token and per-pair costs, the chunk limit it derives,
// and the share ledger.

#include "scheduler/prefill_pacer.h"

#include <cmath>

#include "gtest/gtest.h"

namespace hkv {
namespace {

// A GPU whose steps cost exactly decode + a * tokens + b * pairs seconds.
constexpr double kDecode = 0.006, kA = 20e-6, kB = 1.7e-9;

StepWork Chunk(int32_t decodes, int64_t start, int64_t tokens) {
  StepWork w;
  w.decodes = decodes;
  w.prefill_tokens = tokens;
  w.pairs = static_cast<double>(tokens) * (static_cast<double>(start) + tokens / 2.0);
  return w;
}

absl::Duration Cost(const StepWork& w) {
  return absl::Seconds((w.decodes > 0 ? kDecode : 0.0) + kA * w.prefill_tokens + kB * w.pairs);
}

TEST(PrefillPacerTest, OffByDefaultChangesNothing) {
  PrefillPacer p(PrefillPacingOptions{});
  EXPECT_FALSE(p.enabled());
  p.Observe(Chunk(8, 0, 8192), absl::Seconds(1));
  EXPECT_TRUE(p.PrefillAllowed());
  EXPECT_EQ(p.ChunkLimit(30000, StepWork{}, 8192), 8192);
}

TEST(PrefillPacerTest, FitsTheCostsAndCutsChunksToTheStepTime) {
  PrefillPacingOptions o;
  o.max_step = absl::Milliseconds(100);
  PrefillPacer p(o);
  EXPECT_EQ(p.ChunkLimit(0, StepWork{}, 8192), 8192) << "nothing measured yet";
  for (int i = 0; i < 5; ++i) p.Observe(Chunk(8, 0, 0), Cost(Chunk(8, 0, 0)));
  EXPECT_NEAR(p.decode_step_seconds(), kDecode, 1e-9);
  // Chunks of a long prompt at growing depths, as a scheduler would run them.
  int64_t start = 0;
  for (int i = 0; i < 12; ++i) {
    const StepWork w = Chunk(8, start, 2048);
    p.Observe(w, Cost(w));
    start += 2048;
  }
  EXPECT_NEAR(p.per_token_seconds(), kA, kA * 0.02);
  EXPECT_NEAR(p.per_pair_seconds(), kB, kB * 0.02);
  for (int64_t depth : {0, 4096, 16384, 32768, 131072}) {
    const int32_t c = p.ChunkLimit(depth, StepWork{}, 8192);
    const double with_c = absl::ToDoubleSeconds(Cost(Chunk(8, depth, c)));
    const double with_more = absl::ToDoubleSeconds(Cost(Chunk(8, depth, c + 64)));
    EXPECT_LE(with_c, 0.1 * 1.02) << "depth " << depth << ": " << c << " tokens";
    if (c < 8192) EXPECT_GT(with_more, 0.1 * 0.98) << "depth " << depth << ": " << c;
  }
  // Work already in the step leaves less time; the floor keeps every prompt moving.
  EXPECT_LT(p.ChunkLimit(4096, Chunk(8, 0, 1024), 8192), p.ChunkLimit(4096, StepWork{}, 8192));
  EXPECT_EQ(p.ChunkLimit(1 << 30, StepWork{}, 8192), o.min_chunk);
  EXPECT_EQ(p.ChunkLimit(1 << 30, StepWork{}, 10), 10);
}

TEST(PrefillPacerTest, ShareHoldsPrefillBackUntilDecodesCatchUp) {
  PrefillPacingOptions o;
  o.max_prefill_share = 0.4;
  PrefillPacer p(o);
  for (int i = 0; i < 20; ++i) p.Observe(Chunk(8, 0, 0), Cost(Chunk(8, 0, 0)));
  EXPECT_TRUE(p.PrefillAllowed());
  // Simulate: a step carries a chunk whenever the pacer allows; the GPU's prefill share over
  // a long run settles at the cap.
  double prefill = 0, total = 0;
  int64_t start = 0;
  for (int i = 0; i < 5000; ++i) {
    const StepWork w = p.PrefillAllowed() ? Chunk(8, start, 1024) : Chunk(8, 0, 0);
    const absl::Duration t = Cost(w);
    p.Observe(w, t);
    if (w.prefill_tokens > 0) start = (start + 1024) % 32768;
    if (i >= 1000) {
      total += absl::ToDoubleSeconds(t);
      prefill += absl::ToDoubleSeconds(t) - kDecode;
    }
  }
  EXPECT_NEAR(prefill / total, 0.4, 0.05);
}

TEST(PrefillPacerTest, StepsWithoutDecodesAreNotCounted) {
  PrefillPacingOptions o;
  o.max_prefill_share = 0.2;
  PrefillPacer p(o);
  for (int i = 0; i < 10; ++i) p.Observe(Chunk(0, 0, 8192), absl::Milliseconds(200));
  EXPECT_TRUE(p.PrefillAllowed()) << "nobody decodes: prefill is not paced";
}

}  // namespace
}  // namespace hkv
