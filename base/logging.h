#ifndef SBX_BASE_LOGGING_H_
#define SBX_BASE_LOGGING_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <sstream>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"

// A small leveled logger (Debian 12's abseil has no absl/log):
//
//   SBX_LOG(INFO) << "restored " << id << " in " << ms << " ms";
//   SBX_LOG_EVERY_N_SEC(WARNING, 1) << "guest queue " << q << ": bad index";
//   SBX_CHECK(offset < size) << "offset " << offset;
//
// Each message becomes one line, "I1126 20:45:29.123456 4242 file.cc:42] text",
// written with one write(2) so lines from threads and processes do not mix.
// FATAL messages and failed CHECKs abort the process: they are for broken
// invariants, never for anything a guest or a client can cause.

namespace sbx {

enum class LogLevel { kDebug = 0, kInfo, kWarning, kError, kFatal };

// Messages below the minimum level are dropped before they are formatted.
// The initial level is INFO, or what SBX_LOG_LEVEL names at first use.
void SetMinLogLevel(LogLevel level);
LogLevel MinLogLevel();

// "debug", "info", "warning", "error" (any case) -> the level.
absl::StatusOr<LogLevel> ParseLogLevel(std::string_view name);

// Where finished lines go (each with its trailing newline). The default sink
// writes to stderr. Passing nullptr restores the default.
using LogSink = std::function<void(LogLevel level, std::string_view line)>;
void SetLogSink(LogSink sink);

namespace internal {

inline constexpr LogLevel kLevel_DEBUG = LogLevel::kDebug;
inline constexpr LogLevel kLevel_INFO = LogLevel::kInfo;
inline constexpr LogLevel kLevel_WARNING = LogLevel::kWarning;
inline constexpr LogLevel kLevel_ERROR = LogLevel::kError;
inline constexpr LogLevel kLevel_FATAL = LogLevel::kFatal;

bool LogEnabled(LogLevel level);

// Collects one message and emits it when destroyed.
class LogMessage {
 public:
  LogMessage(LogLevel level, const char* file, int line);
  ~LogMessage();
  LogMessage(const LogMessage&) = delete;
  LogMessage& operator=(const LogMessage&) = delete;
  std::ostream& stream() { return stream_; }

 private:
  LogLevel level_;
  std::ostringstream stream_;
};

// Lets one event through per period; counts the ones it held back so the
// next message can say how many were suppressed. Thread-safe.
class RateLimiter {
 public:
  explicit RateLimiter(double period_seconds);
  // True if a message may be logged now; then *suppressed is set to the
  // number of messages dropped since the last one allowed.
  bool Allow(uint64_t* suppressed);

 private:
  const int64_t period_ns_;
  std::atomic<int64_t> next_ns_{0};
  std::atomic<uint64_t> dropped_{0};
};

// "(N similar suppressed) " for N > 0, else "".
std::string SuppressedNote(uint64_t suppressed);

// Makes `SBX_LOG(...) << x` a statement usable in an unbraced if/else.
struct Voidify {
  void operator&(std::ostream&) {}
};

}  // namespace internal
}  // namespace sbx

#define SBX_LOG(severity)                                                   \
  !::sbx::internal::LogEnabled(::sbx::internal::kLevel_##severity)          \
      ? (void)0                                                             \
      : ::sbx::internal::Voidify() &                                        \
            ::sbx::internal::LogMessage(::sbx::internal::kLevel_##severity, \
                                        __FILE__, __LINE__)                 \
                .stream()

// Logs at most once per `seconds` from this call site; the message that gets
// through says how many were suppressed before it.
#define SBX_LOG_EVERY_N_SEC(severity, seconds)                                 \
  for (uint64_t sbx_suppressed_ = 0, sbx_once_ = 1;                           \
       sbx_once_ &&                                                            \
       ::sbx::internal::LogEnabled(::sbx::internal::kLevel_##severity) &&     \
       [&] {                                                                   \
         static ::sbx::internal::RateLimiter sbx_limiter_(seconds);           \
         return sbx_limiter_.Allow(&sbx_suppressed_);                          \
       }();                                                                    \
       sbx_once_ = 0)                                                          \
  ::sbx::internal::LogMessage(::sbx::internal::kLevel_##severity, __FILE__,   \
                              __LINE__)                                        \
          .stream()                                                            \
      << ::sbx::internal::SuppressedNote(sbx_suppressed_)

#define SBX_CHECK(condition)                                                 \
  (condition) ? (void)0                                                      \
              : ::sbx::internal::Voidify() &                                 \
                    ::sbx::internal::LogMessage(::sbx::LogLevel::kFatal,     \
                                                __FILE__, __LINE__)          \
                            .stream()                                        \
                        << "Check failed: " #condition " "

#endif  // SBX_BASE_LOGGING_H_
