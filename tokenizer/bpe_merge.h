#pragma once
// The merge loop shared by every BPE tokenizer, in O(n log n) for n symbols: the symbols form a
// doubly linked list, and a min-heap holds every adjacent pair that merges, ordered by rank, then
// by the left symbol's position (the leftmost of equal ranks first). Merging a pair pushes the
// two new pairs around it; entries that a merge made stale stay in the heap and are skipped when
// popped (as SentencePiece's bpe_model and llama.cpp's llm_tokenizer_bpe do). The result is the
// same as repeatedly scanning the whole sequence for the best pair, in O(n^2).
//
//   symbols:  [a] <-> [b] <-> [c] <-> [d]        heap: (rank(ab), 0) (rank(bc), 1) (rank(cd), 2)
//   merge bc: [a] <-> [bc] <-------> [d]         push (rank(a,bc), 0), (rank(bc,d), 1); the old
//                                                 (ab) and (cd) entries are now stale.
//
// Pure functions; thread-safe.

#include <cstdint>
#include <optional>
#include <string_view>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "tokenizer/tokenizer.h"

namespace hkv {

// NOTE: Debian's Abseil has its own string_view, and its hash maps look strings up without a
// copy only by that type.
inline absl::string_view Key(std::string_view s) { return absl::string_view(s.data(), s.size()); }

// Work between two polls of EncodeControl::check, in bytes of text or merge steps.
inline constexpr int64_t kEncodeCheckInterval = int64_t{1} << 16;

// Polls an EncodeControl's check once per kEncodeCheckInterval units of work. Not thread-safe;
// one per encoding, on the encoding thread.
class EncodeChecker {
 public:
  explicit EncodeChecker(const EncodeControl& control) : control_(control) {}

  // Records `units` of work; returns the check's error when it is polled and fails.
  absl::Status Tick(int64_t units) {
    done_ += units;
    return done_ < next_poll_ ? absl::OkStatus() : Poll();
  }
  // The counters to add to; null when the caller wants none.
  EncodeStats* stats() const { return control_.stats; }

 private:
  absl::Status Poll();

  const EncodeControl& control_;
  int64_t done_ = 0;
  int64_t next_poll_ = kEncodeCheckInterval;
};

// A symbol being merged: its text, and the token id for tokenizers that track ids.
struct BpeSymbol {
  std::string_view text;  // Must stay valid for the merge (a span of the text or a piece).
  TokenId id = -1;
};

// What a pair merges into, and when: lower ranks merge first.
struct BpePair {
  uint32_t rank = 0;
  BpeSymbol merged;
};

// The rank that makes higher scores merge first: the order of floats reversed, with equal floats
// (0 and -0 included) on equal ranks. REQUIRES: `score` is not NaN.
uint32_t RankOfScore(float score);

// The merge table: the pair (left, right) merges into the result, or does not (nullopt). Must
// be deterministic: a pair is looked up again when it is merged.
using BpePairFn =
    absl::FunctionRef<std::optional<BpePair>(const BpeSymbol& left, const BpeSymbol& right)>;

// Merges `symbols` in place until no adjacent pair merges. Ticks `checker` once per pair looked
// up at the start and per heap entry popped, and returns its error, leaving `symbols`
// unspecified.
absl::Status MergeBpe(BpePairFn pair, EncodeChecker* checker, std::vector<BpeSymbol>* symbols);

}  // namespace hkv
