#pragma once
// Minimal logging and invariant checks. Debian 12's Abseil predates absl/log, so hkv has its
// own. Thread-safe: each message is formatted into one buffer and written with one call.
//
//   HKV_LOG(INFO) << "pool has " << n << " blocks";
//   HKV_CHECK(x > 0) << "x must be positive";   // aborts with file:line on failure
//   HKV_DCHECK(...)                              // compiled out in NDEBUG builds

#include <sstream>
#include <string>

namespace hkv {

enum class LogSeverity { kInfo = 0, kWarning = 1, kError = 2, kFatal = 3 };

// Messages below this severity are dropped. Set once from main (flag --log_level).
void SetMinLogSeverity(LogSeverity severity);
LogSeverity MinLogSeverity();

namespace internal {

class LogMessage {
 public:
  LogMessage(const char* file, int line, LogSeverity severity);
  ~LogMessage();  // Writes the line to stderr; aborts for kFatal.
  std::ostream& stream() { return stream_; }

 private:
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
