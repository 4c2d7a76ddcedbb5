#include "headkv/probe_file.h"

#include <fstream>
#include <sstream>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "common/status_macros.h"
#include "headkv/jsonl_lines.h"
#include "nlohmann/json.hpp"

namespace hkv {
namespace {

using Json = nlohmann::json;

absl::StatusOr<std::string> StringField(const Json& doc, const char* name) {
  auto it = doc.find(name);
  if (it == doc.end()) return absl::InvalidArgumentError(absl::StrCat("missing \"", name, "\""));
  if (!it->is_string()) {
    return absl::InvalidArgumentError(absl::StrCat("\"", name, "\" must be a string"));
  }
  return it->get<std::string>();
}

// The prompt text: "prompt", or "haystack" with "needle" inserted at "depth" (then the needle
// is the default span).
absl::Status ReadPrompt(const Json& doc, Probe& probe, bool& span_is_needle) {
  span_is_needle = false;
  if (doc.contains("prompt")) {
    if (doc.contains("haystack")) {
      return absl::InvalidArgumentError("give \"prompt\" or \"haystack\", not both");
    }
    HKV_ASSIGN_OR_RETURN(probe.prompt, StringField(doc, "prompt"));
    return absl::OkStatus();
  }
  HKV_ASSIGN_OR_RETURN(std::string haystack, StringField(doc, "haystack"));
  HKV_ASSIGN_OR_RETURN(std::string needle, StringField(doc, "needle"));
  auto depth = doc.find("depth");
  if (depth == doc.end() || !depth->is_number() || !(depth->get<double>() >= 0.0) ||
      depth->get<double>() > 1.0) {
    return absl::InvalidArgumentError("\"depth\" must be a number in [0, 1]");
  }
  const size_t at = NeedleInsertionPoint(haystack, depth->get<double>());
  probe.prompt = absl::StrCat(haystack.substr(0, at), " ", needle, haystack.substr(at));
  probe.span_begin = static_cast<int64_t>(at) + 1;
  probe.span_end = probe.span_begin + static_cast<int64_t>(needle.size());
  span_is_needle = true;
  return absl::OkStatus();
}

// The answer span: "answer_char_span", else the first "real_needle" in the prompt.
absl::Status ReadSpan(const Json& doc, bool span_is_needle, Probe& probe) {
  auto span = doc.find("answer_char_span");
  if (span != doc.end()) {
    if (span_is_needle) {
      return absl::InvalidArgumentError("\"answer_char_span\" needs \"prompt\", not \"haystack\"");
    }
    if (!span->is_array() || span->size() != 2 || !(*span)[0].is_number_integer() ||
        !(*span)[1].is_number_integer()) {
      return absl::InvalidArgumentError("\"answer_char_span\" must be [begin, end) integers");
    }
    probe.span_begin = (*span)[0].get<int64_t>();
    probe.span_end = (*span)[1].get<int64_t>();
  } else if (doc.contains("real_needle")) {
    HKV_ASSIGN_OR_RETURN(std::string real, StringField(doc, "real_needle"));
    const size_t at = probe.prompt.find(real);
    if (real.empty() || at == std::string::npos) {
      return absl::InvalidArgumentError("\"real_needle\" is empty or not in the prompt");
    }
    probe.span_begin = static_cast<int64_t>(at);
    probe.span_end = probe.span_begin + static_cast<int64_t>(real.size());
  } else if (!span_is_needle) {
    return absl::InvalidArgumentError("missing \"answer_char_span\" or \"real_needle\"");
  }
  if (probe.span_begin < 0 || probe.span_begin >= probe.span_end ||
      probe.span_end > static_cast<int64_t>(probe.prompt.size())) {
    return absl::InvalidArgumentError(absl::StrCat("answer span [", probe.span_begin, ", ",
                                                   probe.span_end, ") is empty or outside the ",
                                                   probe.prompt.size(), "-byte prompt"));
  }
  return absl::OkStatus();
}

absl::StatusOr<Probe> ParseProbeLine(std::string_view line, size_t line_number) {
  Json doc = Json::parse(line, nullptr, /*allow_exceptions=*/false);
  if (doc.is_discarded() || !doc.is_object()) {
    return absl::InvalidArgumentError("not a JSON object");
  }
  Probe probe;
  probe.id = absl::StrCat("line ", line_number);
  if (doc.contains("id")) {
    HKV_ASSIGN_OR_RETURN(probe.id, StringField(doc, "id"));
  }
  HKV_ASSIGN_OR_RETURN(probe.question, StringField(doc, "question"));
  HKV_ASSIGN_OR_RETURN(probe.answer, StringField(doc, "answer"));
  bool span_is_needle = false;
  HKV_RETURN_IF_ERROR(ReadPrompt(doc, probe, span_is_needle));
  HKV_RETURN_IF_ERROR(ReadSpan(doc, span_is_needle, probe));
  return probe;
}

}  // namespace

absl::StatusOr<std::vector<Probe>> ParseProbeFile(std::string_view text,
                                                  const ProbeFileLimits& limits) {
  std::vector<Probe> probes;
  HKV_RETURN_IF_ERROR(ForEachJsonlLine(
      text, limits.max_line_bytes, limits.max_probes, "probes",
      [&probes](std::string_view line, size_t line_number) -> absl::Status {
        HKV_ASSIGN_OR_RETURN(Probe probe, ParseProbeLine(line, line_number));
        probes.push_back(std::move(probe));
        return absl::OkStatus();
      }));
  if (probes.empty()) return absl::InvalidArgumentError("the probe file holds no probes");
  return probes;
}

absl::StatusOr<std::vector<Probe>> LoadProbeFile(const std::string& path,
                                                 const ProbeFileLimits& limits) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read probe file ", path));
  std::ostringstream text;
  text << in.rdbuf();
  absl::StatusOr<std::vector<Probe>> probes = ParseProbeFile(text.str(), limits);
  if (!probes.ok()) {
    return absl::Status(probes.status().code(),
                        absl::StrCat(path, ": ", probes.status().message()));
  }
  return probes;
}

}  // namespace hkv
