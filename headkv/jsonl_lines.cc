#include "headkv/jsonl_lines.h"

#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"

namespace hkv {

absl::Status ForEachJsonlLine(std::string_view text, size_t max_line_bytes, size_t max_records,
                              std::string_view noun,
                              absl::FunctionRef<absl::Status(std::string_view, size_t)> each) {
  size_t line_number = 0, records = 0;
  for (absl::string_view line : absl::StrSplit(absl::string_view(text.data(), text.size()), '\n')) {
    ++line_number;
    if (line.find_first_not_of(" \t\r") == absl::string_view::npos) continue;
    const std::string where = absl::StrCat("line ", line_number, ": ");
    if (line.size() > max_line_bytes) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, line.size(), " bytes, over the limit of ", max_line_bytes));
    }
    if (records >= max_records) {
      return absl::InvalidArgumentError(absl::StrCat(where, "more than ", max_records, " ",
                                                     absl::string_view(noun.data(), noun.size())));
    }
    ++records;
    if (absl::Status s = each({line.data(), line.size()}, line_number); !s.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(where, s.message()));
    }
  }
  return absl::OkStatus();
}

}  // namespace hkv
