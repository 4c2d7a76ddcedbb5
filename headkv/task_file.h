#pragma once
// Evaluation tasks for `hkv eval --tasks`: a JSONL file, one question per line, an object with
//   "id"          string, unique in the file
//   "prompt"      the text prefilled (the question already ends it), or
//   "prompt_ids"  token ids (BOS included) used as they are; when both are given, the ids win
//   "answer"      a string, or an array of strings (the best-scoring one counts)
//   "family"      optional string grouping tasks in the report (default "all")
//   "length"      optional context-length bucket, an integer >= 0 (default 0: none)
// Other fields are ignored (the needle fixture's eval.jsonl carries its recorded results).
//
// Pure functions; thread-compatible.

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace hkv {

struct EvalTask {
  std::string id;
  std::string prompt;                // Empty when only prompt_ids were given.
  std::vector<int32_t> prompt_ids;   // Empty when the prompt text is to be tokenized.
  std::vector<std::string> answers;  // At least one.
  std::string family = "all";
  int64_t length = 0;
};

struct TaskFileLimits {
  size_t max_line_bytes = 4 << 20;  // One task's JSON (a 128k-token prompt is ~0.5 MB).
  size_t max_tasks = 100000;
  size_t max_prompt_ids = 1 << 20;
  size_t max_answers = 64;
  size_t max_name_bytes = 256;  // id and family.
};

// Parses JSONL text (blank lines skipped). INVALID_ARGUMENT "line N: ..." for the first bad
// line: malformed JSON, missing or mistyped fields, negative ids or length, a duplicate id, a
// size past `limits`, or a file with no tasks.
absl::StatusOr<std::vector<EvalTask>> ParseTaskFile(std::string_view text,
                                                    const TaskFileLimits& limits = {});

// Reads and parses the file at `path` (NOT_FOUND when it cannot be read; INVALID_ARGUMENT for
// a file past max_tasks * max_line_bytes).
absl::StatusOr<std::vector<EvalTask>> LoadTaskFile(const std::string& path,
                                                   const TaskFileLimits& limits = {});

}  // namespace hkv
