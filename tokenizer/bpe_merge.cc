#include "tokenizer/bpe_merge.h"

#include <algorithm>
#include <cstring>

#include "common/status_macros.h"

namespace hkv {
namespace {

// One symbol of the list. A merge folds the right node into the left one, so a node's index is
// the position of its leftmost character: comparing indices compares positions.
struct Node {
  BpeSymbol symbol;
  int32_t prev = -1;
  int32_t next = -1;     // -1: none.
  uint32_t version = 0;  // Bumped whenever the node changes or dies: older heap entries are stale.
  bool alive = true;
};

// A pair that merges. Stale when the left node died or absorbed another node (then its next is
// no longer `right`), or when the right node changed since (its version moved on). 16 bytes:
// the heap holds up to 3 per symbol, and its size is what the merge's time goes into.
struct Candidate {
  uint32_t rank;
  int32_t left;
  int32_t right;
  uint32_t right_version;
};

// The heap's order: the lowest rank first, and among equal ranks the leftmost pair.
bool Before(const Candidate& a, const Candidate& b) {
  return a.rank != b.rank ? a.rank < b.rank : a.left < b.left;
}

// A 4-ary min-heap: a node's children share a cache line, so a heap of millions of candidates
// (a long text) takes half the cache misses of a binary one per operation.
class CandidateHeap {
 public:
  explicit CandidateHeap(std::vector<Candidate> items) : items_(std::move(items)) {
    for (size_t i = items_.size() / kArity + 1; i-- > 0;) SiftDown(i);
  }
  bool empty() const { return items_.empty(); }
  const Candidate& top() const { return items_[0]; }
  void push(const Candidate& c) {
    size_t i = items_.size();
    items_.push_back(c);
    while (i > 0) {
      const size_t parent = (i - 1) / kArity;
      if (!Before(c, items_[parent])) break;
      items_[i] = items_[parent];
      i = parent;
    }
    items_[i] = c;
  }
  void pop() {
    items_[0] = items_.back();
    items_.pop_back();
    if (!items_.empty()) SiftDown(0);
  }

 private:
  static constexpr size_t kArity = 4;

  void SiftDown(size_t i) {
    if (i >= items_.size()) return;
    const Candidate c = items_[i];
    const size_t n = items_.size();
    while (true) {
      const size_t first = i * kArity + 1;
      if (first >= n) break;
      size_t best = first;
      const size_t end = std::min(first + kArity, n);
      for (size_t j = first + 1; j < end; ++j) {
        if (Before(items_[j], items_[best])) best = j;
      }
      if (!Before(items_[best], c)) break;
      items_[i] = items_[best];
      i = best;
    }
    items_[i] = c;
  }

  std::vector<Candidate> items_;
};

// Appends the pair that starts at node `left` to `out` when it merges.
void AddCandidate(BpePairFn pair, const std::vector<Node>& nodes, int32_t left, EncodeStats* stats,
                  std::vector<Candidate>* out) {
  if (left < 0) return;
  const int32_t right = nodes[left].next;
  if (right < 0) return;
  if (stats != nullptr) ++stats->pair_lookups;
  const std::optional<BpePair> merged = pair(nodes[left].symbol, nodes[right].symbol);
  if (merged.has_value()) out->push_back({merged->rank, left, right, nodes[right].version});
}

}  // namespace

uint32_t RankOfScore(float score) {
  if (score == 0) score = 0;  // -0 ranks as 0.
  uint32_t bits;
  std::memcpy(&bits, &score, sizeof(bits));
  // Ascending floats as ascending unsigned integers, then reversed.
  const uint32_t ascending = (bits & 0x80000000u) != 0 ? ~bits : bits | 0x80000000u;
  return ~ascending;
}

absl::Status EncodeChecker::Poll() {
  next_poll_ = done_ + kEncodeCheckInterval;
  if (!control_.check) return absl::OkStatus();
  if (control_.stats != nullptr) ++control_.stats->checks;
  return control_.check();
}

absl::Status MergeBpe(BpePairFn pair, EncodeChecker* checker, std::vector<BpeSymbol>* symbols) {
  const int32_t n = static_cast<int32_t>(symbols->size());
  if (n < 2) return absl::OkStatus();
  EncodeStats* stats = checker->stats();
  std::vector<Node> nodes(n);
  for (int32_t i = 0; i < n; ++i) {
    nodes[i].symbol = (*symbols)[i];
    nodes[i].prev = i - 1;
    nodes[i].next = i + 1 < n ? i + 1 : -1;
  }
  std::vector<Candidate> initial;
  initial.reserve(n - 1);
  for (int32_t i = 0; i + 1 < n; ++i) {
    AddCandidate(pair, nodes, i, stats, &initial);
    HKV_RETURN_IF_ERROR(checker->Tick(1));
  }
  CandidateHeap heap(std::move(initial));  // Heapified in O(n).
  std::vector<Candidate> added;
  while (!heap.empty()) {
    const Candidate top = heap.top();
    heap.pop();
    HKV_RETURN_IF_ERROR(checker->Tick(1));
    Node& left = nodes[top.left];
    if (!left.alive || left.next != top.right || nodes[top.right].version != top.right_version) {
      continue;  // Stale.
    }
    Node& right = nodes[top.right];
    if (stats != nullptr) ++stats->pair_lookups;
    const std::optional<BpePair> merged = pair(left.symbol, right.symbol);
    if (!merged.has_value()) continue;  // Only a nondeterministic table gets here.
    left.symbol = merged->merged;
    left.next = right.next;
    if (right.next >= 0) nodes[right.next].prev = top.left;
    ++left.version;
    ++right.version;
    right.alive = false;
    if (stats != nullptr) ++stats->merges;
    added.clear();
    AddCandidate(pair, nodes, left.prev, stats, &added);
    AddCandidate(pair, nodes, top.left, stats, &added);
    for (const Candidate& c : added) heap.push(c);
  }
  symbols->clear();
  for (int32_t i = 0; i >= 0; i = nodes[i].next) symbols->push_back(nodes[i].symbol);
  return absl::OkStatus();
}

}  // namespace hkv
