#ifndef SBX_SANDBOXD_VMM_JAIL_H_
#define SBX_SANDBOXD_VMM_JAIL_H_

#include <sys/types.h>

#include <cstdint>
#include <optional>
#include <set>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "base/unique_fd.h"

// The pieces of jailing sbx-vmm (issue 7) that sit around sandboxd/jail:
// which unprivileged ids each VMM gets, the checks and ownership changes
// before it starts, and how sandboxd reaches the sockets a (possibly
// compromised) VMM created without being redirected elsewhere.

namespace sbx::sandboxd {

// Where the VMMs' ids come from: each running VMM has a uid of its own
// (its gid is the same number), so RLIMIT_NPROC and file ownership are per
// VMM. No other user of the host may use this range.
struct VmmJailOptions {
  uid_t first_uid = 800'000'000;
  uint32_t uid_count = 65'536;
};

// kFailedPrecondition naming the first user of `passwd` or group of
// `group` (files in /etc/passwd's format) whose id lies in the range: a
// jailed VMM would own that user's files. Missing files count as empty.
absl::Status CheckUidRangeIsFree(const VmmJailOptions& range,
                                 const std::string& passwd = "/etc/passwd",
                                 const std::string& group = "/etc/group");

// The ids of the range in use. Thread-safe.
class UidPool {
 public:
  UidPool(uid_t first, uint32_t count) : first_(first), count_(count) {}

  // The lowest free id; kResourceExhausted when all are in use.
  absl::StatusOr<uid_t> Allocate();
  // An adopted VMM's id (one this pool did not hand out in this process).
  // False when `uid` is outside the range.
  bool MarkUsed(uid_t uid);
  void Release(uid_t uid);
  bool Contains(uid_t uid) const { return uid >= first_ && uid - first_ < count_; }

 private:
  const uid_t first_;
  const uint32_t count_;
  absl::Mutex mu_;
  std::set<uid_t> used_ ABSL_GUARDED_BY(mu_);
};

// kFailedPrecondition unless `path` is a statically linked ELF executable
// (no PT_INTERP): the jail holds the binary and nothing else.
absl::Status CheckStaticExecutable(const std::string& path);

// lchown of `path` and, for a directory, everything below it, never
// following a symlink (a VMM could have planted one).
absl::Status ChownTree(const std::string& path, uid_t uid, gid_t gid);

// The real uid of process `pid` (/proc/PID/status); kNotFound when it is
// gone.
absl::StatusOr<uid_t> ProcessUid(pid_t pid);

// A unix socket a VMM created in its own directory, reached through the
// inode found there first: the path is opened O_PATH|O_NOFOLLOW, must be a
// socket (owned by `owner` when given), and every later connection goes to
// /proc/self/fd/N of that descriptor. A VMM that later swaps the name for a
// symlink (to sandboxd's own socket, another VM's control socket...) does
// not redirect sandboxd. Thread-safe.
class PinnedSocket {
 public:
  PinnedSocket(std::string path, std::optional<uid_t> owner)
      : path_(std::move(path)), owner_(owner) {}

  // The path to connect to. kUnavailable while there is no socket at the
  // path yet; kPermissionDenied when something else is there.
  absl::StatusOr<std::string> Path() ABSL_LOCKS_EXCLUDED(mu_);
  const std::string& name() const { return path_; }

 private:
  const std::string path_;
  const std::optional<uid_t> owner_;
  absl::Mutex mu_;
  UniqueFd fd_ ABSL_GUARDED_BY(mu_);
};

}  // namespace sbx::sandboxd

#endif  // SBX_SANDBOXD_VMM_JAIL_H_
