#include "base/status.h"

#include <string.h>

#include <string>

namespace sbx {
namespace {

std::string ErrnoText(int err) {
  char buf[128];
  // GNU strerror_r: returns a pointer to the message, which may or may not
  // be `buf`. Thread-safe, unlike strerror().
  return strerror_r(err, buf, sizeof(buf));
}

}  // namespace

absl::Status ErrnoStatus(std::string_view call, int err) {
  std::string message(call);
  message += ": ";
  message += ErrnoText(err);
  return absl::Status(absl::ErrnoToStatusCode(err), message);
}

absl::Status ErrnoStatus(std::string_view call, std::string_view object,
                         int err) {
  std::string message(call);
  message += " ";
  message += object;
  message += ": ";
  message += ErrnoText(err);
  return absl::Status(absl::ErrnoToStatusCode(err), message);
}

absl::Status Annotate(const absl::Status& status, std::string_view context) {
  if (status.ok()) return status;
  std::string message(context);
  message += ": ";
  message.append(status.message().data(), status.message().size());
  return absl::Status(status.code(), message);
}

}  // namespace sbx
