#pragma once
// HeadKV scoring probes: the JSONL probe file that `hkv headkv-score --probes` reads, and the
// paper's needle-in-a-haystack grid (context lengths x depths) built from a haystack text.
//
// One probe per line, an object with
//   "prompt"                         the full prompt text, or
//   "haystack", "needle", "depth"    a context with the needle inserted at depth in [0, 1];
//   "question", "answer"             strings (the question may already end the prompt);
//   "answer_char_span": [b, e)       the answer span in the prompt (only with "prompt"), or
//   "real_needle"                    text whose first occurrence in the prompt is the span.
// With "haystack" and neither span field, the inserted needle is the span. "id" is optional.
// Character offsets are byte offsets into the UTF-8 prompt (Python's for ASCII text).
//
// Pure functions; thread-compatible.

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace hkv {

struct Probe {
  std::string id;      // "id" when given, else "line N".
  std::string prompt;  // What is prefilled.
  std::string question;
  std::string answer;
  int64_t span_begin = 0;  // The answer span [span_begin, span_end) in `prompt`, non-empty.
  int64_t span_end = 0;
};

struct ProbeFileLimits {
  size_t max_line_bytes = 4 << 20;  // One probe's JSON (a 128k-token prompt is ~0.5 MB).
  size_t max_probes = 100000;
};

// Parses JSONL text (blank lines skipped). INVALID_ARGUMENT "line N: ..." for the first bad
// line: malformed JSON, missing or mistyped fields, a span outside the prompt or empty, a
// real_needle not found, a line or probe count past `limits`, or a file with no probes.
absl::StatusOr<std::vector<Probe>> ParseProbeFile(std::string_view text,
                                                  const ProbeFileLimits& limits = {});

// Reads and parses the file at `path` (NOT_FOUND when it cannot be read).
absl::StatusOr<std::vector<Probe>> LoadProbeFile(const std::string& path,
                                                 const ProbeFileLimits& limits = {});

// The byte offset at which `needle` goes into `context` at `depth`: the nearest sentence end
// ('.', '!' or '?' followed by a space, or ending the text) at or before depth * size, else 0;
// depth 1 appends. REQUIRES: 0 <= depth <= 1.
size_t NeedleInsertionPoint(std::string_view context, double depth);

struct NeedleSpec {
  std::string needle;  // Contains `answer`.
  std::string question;
  std::string answer;
};

// Length of a text in the unit of context_lengths (characters by default, or tokens).
using TextLength = std::function<int64_t(std::string_view)>;

struct GridOptions {
  std::vector<int64_t> context_lengths;
  std::vector<double> depths;   // Each in [0, 1].
  TextLength length;            // Empty: bytes.
  bool append_question = true;  // Prompt = context + " " + question, as HeadKV's probes.
};

// Builds one probe per (context length, depth), length-major: the longest haystack prefix with
// length(prefix) + length(" " + needle) [+ length(" " + question)] <= context length, the needle
// inserted as " " + needle at NeedleInsertionPoint, and the span of the answer inside the needle.
// INVALID_ARGUMENT for an empty grid, a depth outside [0, 1], an answer not in the needle, or a
// context length too small for needle and question.
absl::StatusOr<std::vector<Probe>> BuildProbeGrid(std::string_view haystack, const NeedleSpec& spec,
                                                  const GridOptions& options);

}  // namespace hkv
