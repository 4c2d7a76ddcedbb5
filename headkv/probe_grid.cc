// BuildProbeGrid and NeedleInsertionPoint (declared in probe_file.h).
#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "headkv/probe_file.h"

namespace hkv {
namespace {

bool IsSentenceEnd(std::string_view text, size_t i) {
  const char c = text[i - 1];
  return (c == '.' || c == '!' || c == '?') && (i == text.size() || text[i] == ' ');
}

// The longest prefix of `haystack` whose length is <= budget (length is monotone in the prefix).
size_t LongestPrefix(std::string_view haystack, int64_t budget, const TextLength& length) {
  if (length(haystack) <= budget) return haystack.size();
  size_t lo = 0, hi = haystack.size();  // length(prefix(lo)) <= budget < length(prefix(hi)).
  while (hi - lo > 1) {
    const size_t mid = lo + (hi - lo) / 2;
    (length(haystack.substr(0, mid)) <= budget ? lo : hi) = mid;
  }
  return lo;
}

absl::StatusOr<Probe> BuildOne(std::string_view haystack, const NeedleSpec& spec,
                               const GridOptions& options, const TextLength& length,
                               int64_t context_length, double depth) {
  const std::string needle = " " + spec.needle;
  const std::string question = options.append_question ? " " + spec.question : "";
  const int64_t budget = context_length - length(needle) - length(question);
  if (budget < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("context length ", context_length, " cannot hold the needle and question"));
  }
  const std::string_view context = haystack.substr(0, LongestPrefix(haystack, budget, length));
  const size_t at = NeedleInsertionPoint(context, depth);
  Probe probe;
  probe.id = absl::StrCat("grid-", context_length, "-", depth);
  probe.prompt = std::string(context.substr(0, at)) + needle;
  probe.prompt.append(context.substr(at)).append(question);
  probe.question = spec.question;
  probe.answer = spec.answer;
  probe.span_begin = static_cast<int64_t>(at + 1 + spec.needle.find(spec.answer));
  probe.span_end = probe.span_begin + static_cast<int64_t>(spec.answer.size());
  return probe;
}

}  // namespace

size_t NeedleInsertionPoint(std::string_view context, double depth) {
  if (depth >= 1.0) return context.size();
  // NOTE: HeadKV's (and NIAH's) reference backs off to the previous '.' token so the needle
  // never splits a sentence; we do the same on text, after the punctuation.
  for (size_t i = static_cast<size_t>(depth * context.size()); i > 0; --i) {
    if (IsSentenceEnd(context, i)) return i;
  }
  return 0;
}

absl::StatusOr<std::vector<Probe>> BuildProbeGrid(std::string_view haystack, const NeedleSpec& spec,
                                                  const GridOptions& options) {
  if (options.context_lengths.empty() || options.depths.empty()) {
    return absl::InvalidArgumentError("the grid needs context lengths and depths");
  }
  if (spec.answer.empty() || spec.needle.find(spec.answer) == std::string::npos) {
    return absl::InvalidArgumentError("the answer must be non-empty and inside the needle");
  }
  for (double d : options.depths) {
    if (!(d >= 0.0 && d <= 1.0)) {
      return absl::InvalidArgumentError(absl::StrCat("depth ", d, " is outside [0, 1]"));
    }
  }
  const TextLength length = options.length ? options.length : [](std::string_view s) {
    return static_cast<int64_t>(s.size());
  };
  std::vector<Probe> probes;
  for (int64_t context_length : options.context_lengths) {
    for (double depth : options.depths) {
      absl::StatusOr<Probe> probe =
          BuildOne(haystack, spec, options, length, context_length, depth);
      if (!probe.ok()) return probe.status();
      probes.push_back(*std::move(probe));
    }
  }
  return probes;
}

}  // namespace hkv
