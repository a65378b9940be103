#ifndef SBX_BASE_STATUS_H_
#define SBX_BASE_STATUS_H_

#include <string_view>

#include "absl/status/status.h"

// Debian 12's abseil is built with its own absl::string_view, not an alias
// of std::string_view (ABSL_OPTION_USE_STD_STRING_VIEW is 0), so the two do
// not convert implicitly. sbx interfaces take std::string_view; pass
// std::string to absl functions where a conversion is needed.

namespace sbx {

// A Status for a failed system call: the code follows errno (ENOENT ->
// kNotFound, EACCES -> kPermissionDenied, ...) and the message names the call
// and the error, e.g. "KVM_CREATE_VM: Cannot allocate memory".
absl::Status ErrnoStatus(std::string_view call, int err);

// As above, naming what the call acted on as well:
// "open /dev/kvm: Permission denied".
absl::Status ErrnoStatus(std::string_view call, std::string_view object,
                         int err);

// Returns `status` with `context` put in front of its message
// ("loading kernel: open /x: No such file or directory"); OK stays OK.
absl::Status Annotate(const absl::Status& status, std::string_view context);

}  // namespace sbx

#endif  // SBX_BASE_STATUS_H_
