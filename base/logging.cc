#include "base/logging.h"

#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/synchronization/mutex.h"

namespace sbx {
namespace {

LogLevel InitialLevel() {
  const char* env = std::getenv("SBX_LOG_LEVEL");
  if (env == nullptr) return LogLevel::kInfo;
  absl::StatusOr<LogLevel> level = ParseLogLevel(env);
  return level.ok() ? *level : LogLevel::kInfo;
}

std::atomic<int>& MinLevel() {
  static std::atomic<int> level{static_cast<int>(InitialLevel())};
  return level;
}

absl::Mutex sink_mu;
LogSink& Sink() ABSL_EXCLUSIVE_LOCKS_REQUIRED(sink_mu) {
  static LogSink* sink = new LogSink();
  return *sink;
}

void WriteToStderr(std::string_view line) {
  // One write(2) per line keeps concurrent lines whole; retry short writes.
  while (!line.empty()) {
    ssize_t n = ::write(STDERR_FILENO, line.data(), line.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      return;
    }
    line.remove_prefix(static_cast<size_t>(n));
  }
}

char LevelLetter(LogLevel level) {
  switch (level) {
    case LogLevel::kDebug: return 'D';
    case LogLevel::kInfo: return 'I';
    case LogLevel::kWarning: return 'W';
    case LogLevel::kError: return 'E';
    case LogLevel::kFatal: return 'F';
  }
  return '?';
}

const char* Basename(const char* path) {
  const char* base = path;
  for (const char* p = path; *p != '\0'; ++p) {
    if (*p == '/') base = p + 1;
  }
  return base;
}

int64_t MonotonicNanos() {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return int64_t{ts.tv_sec} * 1'000'000'000 + ts.tv_nsec;
}

}  // namespace

void SetMinLogLevel(LogLevel level) {
  MinLevel().store(static_cast<int>(level), std::memory_order_relaxed);
}

LogLevel MinLogLevel() {
  return static_cast<LogLevel>(MinLevel().load(std::memory_order_relaxed));
}

absl::StatusOr<LogLevel> ParseLogLevel(std::string_view name) {
  std::string lower = absl::AsciiStrToLower(std::string(name));
  if (lower == "debug") return LogLevel::kDebug;
  if (lower == "info") return LogLevel::kInfo;
  if (lower == "warning" || lower == "warn") return LogLevel::kWarning;
  if (lower == "error") return LogLevel::kError;
  return absl::InvalidArgumentError(
      "unknown log level '" + std::string(name) +
      "' (want debug, info, warning or error)");
}

void SetLogSink(LogSink sink) {
  absl::MutexLock lock(&sink_mu);
  Sink() = std::move(sink);
}

namespace internal {

bool LogEnabled(LogLevel level) {
  return level == LogLevel::kFatal || level >= MinLogLevel();
}

LogMessage::LogMessage(LogLevel level, const char* file, int line)
    : level_(level) {
  struct timeval tv;
  gettimeofday(&tv, nullptr);
  struct tm tm;
  localtime_r(&tv.tv_sec, &tm);
  char prefix[64];
  std::snprintf(prefix, sizeof(prefix), "%c%02d%02d %02d:%02d:%02d.%06ld %d ",
                LevelLetter(level), tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
                tm.tm_min, tm.tm_sec, static_cast<long>(tv.tv_usec),
                static_cast<int>(::getpid()));
  stream_ << prefix << Basename(file) << ':' << line << "] ";
}

LogMessage::~LogMessage() {
  stream_ << '\n';
  std::string line = std::move(stream_).str();
  bool on_stderr = false;
  {
    absl::MutexLock lock(&sink_mu);
    if (Sink()) {
      Sink()(level_, line);
    } else {
      WriteToStderr(line);
      on_stderr = true;
    }
  }
  if (level_ == LogLevel::kFatal) {
    // Whatever the sink, the reason for an abort must reach a person.
    if (!on_stderr) WriteToStderr(line);
    std::abort();
  }
}

std::string SuppressedNote(uint64_t suppressed) {
  if (suppressed == 0) return std::string();
  // Appended piecewise: GCC 12 at -O3 warns falsely (-Wrestrict, GCC bug
  // 105651) on `"literal" + std::string`.
  std::string note = "(";
  note += std::to_string(suppressed);
  note += " similar suppressed) ";
  return note;
}

RateLimiter::RateLimiter(double period_seconds)
    : period_ns_(static_cast<int64_t>(period_seconds * 1e9)) {}

bool RateLimiter::Allow(uint64_t* suppressed) {
  int64_t now = MonotonicNanos();
  int64_t next = next_ns_.load(std::memory_order_relaxed);
  if (now < next ||
      !next_ns_.compare_exchange_strong(next, now + period_ns_,
                                        std::memory_order_relaxed)) {
    dropped_.fetch_add(1, std::memory_order_relaxed);
    return false;
  }
  *suppressed = dropped_.exchange(0, std::memory_order_relaxed);
  return true;
}

}  // namespace internal
}  // namespace sbx
