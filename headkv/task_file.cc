#include "headkv/task_file.h"

#include <fstream>
#include <sstream>
#include <utility>

#include "absl/container/flat_hash_set.h"
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

absl::Status Invalid(const char* name, const char* what) {
  return absl::InvalidArgumentError(absl::StrCat("\"", name, "\" ", what));
}

// A bounded, non-empty string field.
absl::StatusOr<std::string> Name(const Json& doc, const char* name, size_t max_bytes) {
  auto it = doc.find(name);
  if (it == doc.end()) return Invalid(name, "is missing");
  if (!it->is_string()) return Invalid(name, "must be a string");
  std::string s = it->get<std::string>();
  if (s.empty() || s.size() > max_bytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("\"", name, "\" must hold 1 to ", max_bytes, " bytes"));
  }
  return s;
}

absl::Status ReadPrompt(const Json& doc, const TaskFileLimits& limits, EvalTask& task) {
  auto text = doc.find("prompt");
  auto ids = doc.find("prompt_ids");
  if (text == doc.end() && ids == doc.end()) return Invalid("prompt", "is missing");
  if (text != doc.end()) {
    if (!text->is_string()) return Invalid("prompt", "must be a string");
    task.prompt = text->get<std::string>();
  }
  if (ids == doc.end()) {
    if (task.prompt.empty()) return Invalid("prompt", "is empty");
    return absl::OkStatus();
  }
  if (!ids->is_array() || ids->empty()) return Invalid("prompt_ids", "must be a non-empty array");
  if (ids->size() > limits.max_prompt_ids) {
    return absl::InvalidArgumentError(
        absl::StrCat("\"prompt_ids\" holds more than ", limits.max_prompt_ids, " ids"));
  }
  task.prompt_ids.reserve(ids->size());
  for (const Json& id : *ids) {
    if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() > INT32_MAX) {
      return Invalid("prompt_ids", "must hold integers in [0, 2^31)");
    }
    task.prompt_ids.push_back(static_cast<int32_t>(id.get<int64_t>()));
  }
  return absl::OkStatus();
}

absl::Status ReadAnswers(const Json& doc, const TaskFileLimits& limits, EvalTask& task) {
  auto it = doc.find("answer");
  if (it == doc.end()) return Invalid("answer", "is missing");
  if (it->is_string()) {
    task.answers.push_back(it->get<std::string>());
    return absl::OkStatus();
  }
  if (!it->is_array() || it->empty() || it->size() > limits.max_answers) {
    return absl::InvalidArgumentError(absl::StrCat(
        "\"answer\" must be a string or an array of 1 to ", limits.max_answers, " strings"));
  }
  for (const Json& a : *it) {
    if (!a.is_string()) return Invalid("answer", "must hold strings only");
    task.answers.push_back(a.get<std::string>());
  }
  return absl::OkStatus();
}

absl::StatusOr<EvalTask> ParseTaskLine(std::string_view line, const TaskFileLimits& limits) {
  Json doc = Json::parse(line, nullptr, /*allow_exceptions=*/false);
  if (doc.is_discarded() || !doc.is_object()) {
    return absl::InvalidArgumentError("not a JSON object");
  }
  EvalTask task;
  HKV_ASSIGN_OR_RETURN(task.id, Name(doc, "id", limits.max_name_bytes));
  HKV_RETURN_IF_ERROR(ReadPrompt(doc, limits, task));
  HKV_RETURN_IF_ERROR(ReadAnswers(doc, limits, task));
  if (doc.contains("family")) {
    HKV_ASSIGN_OR_RETURN(task.family, Name(doc, "family", limits.max_name_bytes));
  }
  auto length = doc.find("length");
  if (length != doc.end()) {
    if (!length->is_number_integer() || length->get<int64_t>() < 0) {
      return Invalid("length", "must be an integer >= 0");
    }
    task.length = length->get<int64_t>();
  }
  return task;
}

}  // namespace

absl::StatusOr<std::vector<EvalTask>> ParseTaskFile(std::string_view text,
                                                    const TaskFileLimits& limits) {
  std::vector<EvalTask> tasks;
  absl::flat_hash_set<std::string> ids;
  HKV_RETURN_IF_ERROR(ForEachJsonlLine(
      text, limits.max_line_bytes, limits.max_tasks, "tasks",
      [&](std::string_view line, size_t) -> absl::Status {
        HKV_ASSIGN_OR_RETURN(EvalTask task, ParseTaskLine(line, limits));
        if (!ids.insert(task.id).second) {
          return absl::InvalidArgumentError(absl::StrCat("duplicate id \"", task.id, "\""));
        }
        tasks.push_back(std::move(task));
        return absl::OkStatus();
      }));
  if (tasks.empty()) return absl::InvalidArgumentError("the tasks file holds no tasks");
  return tasks;
}

absl::StatusOr<std::vector<EvalTask>> LoadTaskFile(const std::string& path,
                                                   const TaskFileLimits& limits) {
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read tasks file ", path));
  const auto size = static_cast<uint64_t>(in.tellg());
  // Bound what is read before parsing: the file cannot hold more than the limits allow.
  if (size > static_cast<uint64_t>(limits.max_tasks) * (limits.max_line_bytes + 1)) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", size, " bytes, over the limits"));
  }
  in.seekg(0);
  std::ostringstream text;
  text << in.rdbuf();
  absl::StatusOr<std::vector<EvalTask>> tasks = ParseTaskFile(text.str(), limits);
  if (!tasks.ok()) {
    return absl::Status(tasks.status().code(), absl::StrCat(path, ": ", tasks.status().message()));
  }
  return tasks;
}

}  // namespace hkv
