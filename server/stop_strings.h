#pragma once
// StopStrings: one request's stop strings as an Aho-Corasick automaton, so that matching costs
// O(1) amortized per byte of new output, whatever the number of strings or the text generated
// so far. Built once per request on the submitting thread, then read only by the engine
// thread (OutputProcessor).
//
// A state is a trie node: the longest suffix of the text seen so far that is a prefix of some
// stop string. Its depth is what must be held back (it may still become a stop string); its
// `match` is the longest stop string that ends at the current byte (0 if none).
//
// Also the per-request limits on stop conditions, checked before a request is queued.

#include <cstdint>
#include <iterator>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/types/span.h"

namespace hkv {

// Bounds on what one request may ask to stop on (README "## Limits"): its cost to the engine
// thread and to memory is proportional to them.
struct StopLimits {
  int32_t max_strings = 64;     // --max-stop-strings
  int32_t max_bytes = 4096;     // --max-stop-bytes, over all stop strings together.
  int32_t max_token_ids = 256;  // --max-stop-token-ids
};

// INVALID_ARGUMENT naming the limit and its flag when a request has more stop strings, more
// bytes of them, or more stop token ids than `limits` allow.
absl::Status CheckStopLimits(const StopLimits& limits, int64_t num_strings, int64_t total_bytes,
                             int64_t num_token_ids);
// The same for the strings `stops` (any container of them), whose bytes are counted only when
// their number is within the limit: an over-long list is refused in O(1).
template <typename Strings>
absl::Status CheckStopLimits(const StopLimits& limits, const Strings& stops,
                             int64_t num_token_ids) {
  const int64_t num_strings = static_cast<int64_t>(std::size(stops));
  int64_t total_bytes = 0;
  if (num_strings <= limits.max_strings) {
    for (const auto& s : stops) total_bytes += static_cast<int64_t>(s.size());
  }
  return CheckStopLimits(limits, num_strings, total_bytes, num_token_ids);
}

class StopStrings {
 public:
  using State = int32_t;
  static constexpr State kStart = 0;

  // Builds the automaton of `stops`; empty strings never match and are left out. O(total
  // bytes) time and memory.
  explicit StopStrings(absl::Span<const std::string> stops = {});

  // Returns whether there is no (non-empty) stop string.
  bool empty() const { return nodes_.size() == 1; }
  // Returns the state after reading `byte` in `state`.
  State Next(State state, uint8_t byte) const;
  // Returns the length of the partial match that `state` stands for (what to hold back).
  int32_t depth(State state) const { return nodes_[state].depth; }
  // Returns the length of the longest stop string ending at the byte that led to `state`, or 0.
  int32_t match(State state) const { return nodes_[state].match; }

 private:
  struct Node {
    int32_t depth = 0;
    int32_t match = 0;
    State fail = kStart;     // Longest proper suffix that is also a trie node.
    int32_t first_edge = 0;  // This node's edges: [first_edge, first_edge + num_edges).
    int32_t num_edges = 0;
  };
  // Returns the trie child of `state` by `byte`, or -1.
  State Child(State state, uint8_t byte) const;

  std::vector<Node> nodes_;
  std::vector<uint8_t> edge_byte_;  // Per node, sorted by byte.
  std::vector<State> edge_to_;
};

}  // namespace hkv
