#include "server/stop_strings.h"

#include <algorithm>
#include <deque>
#include <utility>

#include "absl/strings/str_cat.h"

namespace hkv {

absl::Status CheckStopLimits(const StopLimits& limits, int64_t num_strings, int64_t total_bytes,
                             int64_t num_token_ids) {
  if (num_strings > limits.max_strings) {
    return absl::InvalidArgumentError(absl::StrCat("sampling.stop has ", num_strings,
                                                   " strings; the limit is ", limits.max_strings,
                                                   " (the server's --max-stop-strings)"));
  }
  if (total_bytes > limits.max_bytes) {
    return absl::InvalidArgumentError(absl::StrCat("sampling.stop has ", total_bytes,
                                                   " bytes in all; the limit is ", limits.max_bytes,
                                                   " (the server's --max-stop-bytes)"));
  }
  if (num_token_ids > limits.max_token_ids) {
    return absl::InvalidArgumentError(absl::StrCat("sampling.stop_token_ids has ", num_token_ids,
                                                   " ids; the limit is ", limits.max_token_ids,
                                                   " (the server's --max-stop-token-ids)"));
  }
  return absl::OkStatus();
}

StopStrings::StopStrings(absl::Span<const std::string> stops) {
  // The trie, with each node's children unsorted while it grows.
  std::vector<std::vector<std::pair<uint8_t, State>>> children(1);
  nodes_.emplace_back();
  for (const std::string& s : stops) {
    if (s.empty()) continue;
    State at = kStart;
    for (char ch : s) {
      const uint8_t b = static_cast<uint8_t>(ch);
      auto& edges = children[at];
      auto it =
          std::find_if(edges.begin(), edges.end(), [b](const auto& e) { return e.first == b; });
      if (it != edges.end()) {
        at = it->second;
        continue;
      }
      const State next = static_cast<State>(nodes_.size());
      edges.emplace_back(b, next);
      nodes_.emplace_back();
      nodes_.back().depth = nodes_[at].depth + 1;
      children.emplace_back();
      at = next;
    }
    nodes_[at].match = nodes_[at].depth;  // A whole stop string ends here.
  }
  for (size_t n = 0; n < nodes_.size(); ++n) {
    std::sort(children[n].begin(), children[n].end());
    nodes_[n].first_edge = static_cast<int32_t>(edge_byte_.size());
    nodes_[n].num_edges = static_cast<int32_t>(children[n].size());
    for (const auto& [b, to] : children[n]) {
      edge_byte_.push_back(b);
      edge_to_.push_back(to);
    }
  }
  // Failure links in breadth-first order, so that a node's links are set before its children's.
  std::deque<State> queue;
  for (const auto& [b, to] : children[kStart]) queue.push_back(to);
  while (!queue.empty()) {
    const State u = queue.front();
    queue.pop_front();
    for (const auto& [b, v] : children[u]) {
      State f = nodes_[u].fail;
      State link = Child(f, b);
      while (link < 0 && f != kStart) {
        f = nodes_[f].fail;
        link = Child(f, b);
      }
      nodes_[v].fail = link < 0 ? kStart : link;
      // Not a stop string itself: the longest one ending here is its failure link's.
      if (nodes_[v].match == 0) nodes_[v].match = nodes_[nodes_[v].fail].match;
      queue.push_back(v);
    }
  }
}

StopStrings::State StopStrings::Child(State state, uint8_t byte) const {
  const Node& n = nodes_[state];
  const auto begin = edge_byte_.begin() + n.first_edge;
  const auto end = begin + n.num_edges;
  const auto it = std::lower_bound(begin, end, byte);
  return it != end && *it == byte ? edge_to_[it - edge_byte_.begin()] : -1;
}

StopStrings::State StopStrings::Next(State state, uint8_t byte) const {
  // Each failure step shortens the partial match, which grows by at most one per byte: O(1)
  // amortized over a stream.
  while (true) {
    const State child = Child(state, byte);
    if (child >= 0) return child;
    if (state == kStart) return kStart;
    state = nodes_[state].fail;
  }
}

}  // namespace hkv
