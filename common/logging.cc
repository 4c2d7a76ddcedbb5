#include "common/logging.h"

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace hkv {
namespace {
std::atomic<int> g_min_severity{static_cast<int>(LogSeverity::kInfo)};
std::atomic<int> g_format{static_cast<int>(LogFormat::kText)};
constexpr char kLetters[] = {'I', 'W', 'E', 'F'};
constexpr const char* kNames[] = {"INFO", "WARNING", "ERROR", "FATAL"};

const char* BaseName(const char* file) {
  const char* base = std::strrchr(file, '/');
  return base ? base + 1 : file;
}

// JSON string escaping (RFC 8259): quotes, backslashes and control bytes; other bytes pass.
void AppendJsonString(std::string_view s, std::string* out) {
  out->push_back('"');
  for (unsigned char c : s) {
    switch (c) {
      case '"':
        out->append("\\\"");
        break;
      case '\\':
        out->append("\\\\");
        break;
      case '\n':
        out->append("\\n");
        break;
      case '\t':
        out->append("\\t");
        break;
      default:
        if (c < 0x20 || c == 0x7f) {
          absl::StrAppendFormat(out, "\\u%04x", c);
        } else {
          out->push_back(static_cast<char>(c));
        }
    }
  }
  out->push_back('"');
}

// A text value is quoted when it would not read back as one word.
void AppendTextValue(const LogField& f, std::string* out) {
  const bool plain = !f.value.empty() && f.value.find_first_of(" \t\n\"=") == std::string::npos;
  if (f.number || plain) {
    out->append(f.value);
  } else {
    AppendJsonString(f.value, out);
  }
}

void WriteLine(std::string line, LogSeverity severity) {
  line.push_back('\n');
  std::fwrite(line.data(), 1, line.size(), stderr);
  if (severity == LogSeverity::kFatal) {
    std::fflush(stderr);
    std::abort();
  }
}

}  // namespace

void SetMinLogSeverity(LogSeverity severity) {
  g_min_severity.store(static_cast<int>(severity));
}
LogSeverity MinLogSeverity() { return static_cast<LogSeverity>(g_min_severity.load()); }

void SetLogFormat(LogFormat format) { g_format.store(static_cast<int>(format)); }
LogFormat CurrentLogFormat() { return static_cast<LogFormat>(g_format.load()); }

absl::StatusOr<LogSeverity> ParseLogSeverity(std::string_view name) {
  const std::string n = absl::AsciiStrToLower(std::string(name));
  if (n == "info") return LogSeverity::kInfo;
  if (n == "warning" || n == "warn") return LogSeverity::kWarning;
  if (n == "error") return LogSeverity::kError;
  return absl::InvalidArgumentError(
      absl::StrCat("log_level must be info, warning or error, got '", n, "'"));
}

absl::StatusOr<LogFormat> ParseLogFormat(std::string_view name) {
  if (name == "text") return LogFormat::kText;
  if (name == "json") return LogFormat::kJson;
  return absl::InvalidArgumentError(
      absl::StrCat("log_format must be text or json, got '", std::string(name), "'"));
}

std::string FormatLogLine(LogFormat format, LogSeverity severity, const char* file, int line,
                          std::string_view message, const std::vector<LogField>& fields) {
  const absl::Time now = absl::Now();
  const int s = static_cast<int>(severity);
  std::string out;
  if (format == LogFormat::kJson) {
    absl::StrAppend(&out, "{\"ts\":\"",
                    absl::FormatTime("%Y-%m-%dT%H:%M:%E3SZ", now, absl::UTCTimeZone()),
                    "\",\"level\":\"", kNames[s], "\",\"src\":");
    AppendJsonString(absl::StrCat(BaseName(file), ":", line), &out);
    out.append(",\"msg\":");
    AppendJsonString(message, &out);
    for (const LogField& f : fields) {
      out.push_back(',');
      AppendJsonString(f.key, &out);
      out.push_back(':');
      if (f.number) {
        out.append(f.value);
      } else {
        AppendJsonString(f.value, &out);
      }
    }
    out.push_back('}');
    return out;
  }
  absl::StrAppend(&out, std::string(1, kLetters[s]),
                  absl::FormatTime("%m%d %H:%M:%E3S", now, absl::UTCTimeZone()), " ",
                  BaseName(file), ":", line, "] ");
  out.append(message.data(), message.size());
  for (const LogField& f : fields) {
    absl::StrAppend(&out, " ", f.key, "=");
    AppendTextValue(f, &out);
  }
  return out;
}

void LogEvent(LogSeverity severity, const char* file, int line, std::string_view message,
              const std::vector<LogField>& fields) {
  if (severity < MinLogSeverity()) return;
  WriteLine(FormatLogLine(CurrentLogFormat(), severity, file, line, message, fields), severity);
}

namespace internal {

LogMessage::LogMessage(const char* file, int line, LogSeverity severity)
    : file_(file), line_(line), severity_(severity) {}

LogMessage::~LogMessage() {
  WriteLine(FormatLogLine(CurrentLogFormat(), severity_, file_, line_, stream_.str(), {}),
            severity_);
}

}  // namespace internal
}  // namespace hkv
