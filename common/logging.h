#pragma once
// Minimal logging and invariant checks. Debian 12's Abseil predates absl/log, so hkv has its
// own. Thread-safe: each message is formatted into one buffer and written with one call.
//
// Two formats (SetLogFormat, from main's --log-format): text, one line per message
//   I1201 17:40:00.123 engine.cc:12] pool has 96 blocks
// and json, one object per line for log collectors
//   {"ts":"2026-12-01T17:40:00.123Z","level":"INFO","src":"engine.cc:12","msg":"pool ..."}
// LogEvent adds named fields: `key=value` pairs after the message in text, members of the
// object in json (values are strings or numbers as given).
//
//   HKV_LOG(INFO) << "pool has " << n << " blocks";
//   HKV_CHECK(x > 0) << "x must be positive";   // aborts with file:line on failure
//   HKV_DCHECK(...)                              // compiled out in NDEBUG builds

#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace hkv {

enum class LogSeverity { kInfo = 0, kWarning = 1, kError = 2, kFatal = 3 };

// Messages below this severity are dropped. Set once from main (flag --log_level).
void SetMinLogSeverity(LogSeverity severity);
LogSeverity MinLogSeverity();

enum class LogFormat { kText = 0, kJson = 1 };
// Set once from main (flag --log_format), before other threads log.
void SetLogFormat(LogFormat format);
LogFormat CurrentLogFormat();

// Parses "info" | "warning" | "error" (case-insensitive); INVALID_ARGUMENT otherwise.
absl::StatusOr<LogSeverity> ParseLogSeverity(std::string_view name);
// Parses "text" | "json"; INVALID_ARGUMENT otherwise.
absl::StatusOr<LogFormat> ParseLogFormat(std::string_view name);

// One named value of a structured log line. `number` values are written bare in json (they
// must then be a JSON number); others are quoted and escaped.
struct LogField {
  std::string key;
  std::string value;
  bool number = false;
};

// Writes one structured line (see the header comment) when `severity` is enabled.
void LogEvent(LogSeverity severity, const char* file, int line, std::string_view message,
              const std::vector<LogField>& fields);
// Returns the line LogEvent would write in `format`, without the trailing newline (for tests).
std::string FormatLogLine(LogFormat format, LogSeverity severity, const char* file, int line,
                          std::string_view message, const std::vector<LogField>& fields);

namespace internal {

class LogMessage {
 public:
  LogMessage(const char* file, int line, LogSeverity severity);
  ~LogMessage();  // Writes the line to stderr; aborts for kFatal.
  std::ostream& stream() { return stream_; }

 private:
  const char* file_;
  int line_;
  LogSeverity severity_;
  std::ostringstream stream_;
};

// Swallows the stream expression when a check passes or a level is disabled.
struct LogVoidify {
  void operator&(std::ostream&) {}
};

}  // namespace internal
}  // namespace hkv

#define HKV_LOG_SEVERITY_INFO ::hkv::LogSeverity::kInfo
#define HKV_LOG_SEVERITY_WARNING ::hkv::LogSeverity::kWarning
#define HKV_LOG_SEVERITY_ERROR ::hkv::LogSeverity::kError
#define HKV_LOG_SEVERITY_FATAL ::hkv::LogSeverity::kFatal

#define HKV_LOG(level)                                                 \
  (HKV_LOG_SEVERITY_##level < ::hkv::MinLogSeverity())                 \
      ? (void)0                                                        \
      : ::hkv::internal::LogVoidify() &                                \
            ::hkv::internal::LogMessage(__FILE__, __LINE__, HKV_LOG_SEVERITY_##level).stream()

#define HKV_LOG_EVENT(level, message, fields) \
  ::hkv::LogEvent(HKV_LOG_SEVERITY_##level, __FILE__, __LINE__, (message), (fields))

#define HKV_CHECK(cond)                                                                \
  (cond) ? (void)0                                                                     \
         : ::hkv::internal::LogVoidify() &                                             \
               ::hkv::internal::LogMessage(__FILE__, __LINE__, ::hkv::LogSeverity::kFatal) \
                       .stream()                                                       \
                   << "Check failed: " #cond " "

#ifdef NDEBUG
#define HKV_DCHECK(cond) \
  while (false) HKV_CHECK(cond)
#else
#define HKV_DCHECK(cond) HKV_CHECK(cond)
#endif
