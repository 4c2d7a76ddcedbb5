#pragma once
// The line walk the JSONL readers of headkv/ share (probe files, tasks files): blank lines
// skipped, each line and the record count bounded, errors prefixed with "line N: ". Pure.

#include <cstddef>
#include <string_view>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"

namespace hkv {

// Calls `each(line, line_number)` (1-based) for every non-blank line of `text`, in order.
// INVALID_ARGUMENT "line N: ..." for a line over `max_line_bytes`, for a record past
// `max_records` ("more than M <noun>"), or carrying the message of the first error `each` returns.
absl::Status ForEachJsonlLine(std::string_view text, size_t max_line_bytes, size_t max_records,
                              std::string_view noun,
                              absl::FunctionRef<absl::Status(std::string_view, size_t)> each);

}  // namespace hkv
