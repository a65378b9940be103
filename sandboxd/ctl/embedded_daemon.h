#ifndef SBX_SANDBOXD_CTL_EMBEDDED_DAEMON_H_
#define SBX_SANDBOXD_CTL_EMBEDDED_DAEMON_H_

// `sandboxctl run` with no daemon listening: a private sandboxd for the
// duration of one command.

#include <sys/types.h>

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace sbx::ctl {

// True when nothing listens at a unix:// address (the socket file is
// missing, or connecting is refused). False for other addresses, and when
// something answers or connecting fails otherwise (e.g. permission denied:
// a daemon is there, the error comes with the first call).
bool NothingListensAt(const std::string& addr);

// The sandboxd binary: beside `self_exe` (sandboxctl's own path), else
// "sandboxd" for a PATH lookup.
std::string FindSandboxd(const std::string& self_exe);

class EmbeddedDaemon {
 public:
  // Runs `binary --listen unix://<tmp>/sandboxd.sock [--state-dir DIR]` in
  // a private temporary directory (its output goes to a log file there) and
  // waits up to `timeout` until it accepts calls. On failure the error
  // carries the log's tail.
  static absl::StatusOr<std::unique_ptr<EmbeddedDaemon>> Start(
      const std::string& binary, const std::string& state_dir,
      absl::Duration timeout = absl::Minutes(1));

  // SIGTERM, waits for it (SIGKILL after 30 s), removes the directory.
  ~EmbeddedDaemon();
  EmbeddedDaemon(const EmbeddedDaemon&) = delete;
  EmbeddedDaemon& operator=(const EmbeddedDaemon&) = delete;

  const std::string& addr() const { return addr_; }

 private:
  EmbeddedDaemon(pid_t pid, std::string dir)
      : pid_(pid), dir_(std::move(dir)),
        addr_("unix://" + dir_ + "/sandboxd.sock") {}

  pid_t pid_;
  std::string dir_;
  std::string addr_;
};

}  // namespace sbx::ctl

#endif  // SBX_SANDBOXD_CTL_EMBEDDED_DAEMON_H_
