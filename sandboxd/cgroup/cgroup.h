#ifndef SBX_SANDBOXD_CGROUP_CGROUP_H_
#define SBX_SANDBOXD_CGROUP_CGROUP_H_

#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

// The quota side of a sandbox: each sbx-vmm runs in its own cgroup with a
// CPU quota, a memory limit and a pids limit. Both cgroup versions: v2
// (one unified hierarchy, most hosts) and v1 (a hierarchy per controller,
// as on the machines this project is built on).

namespace sbx::sandboxd {

struct CgroupLimits {
  // CPU time per wall-clock second, in thousandths of a CPU (1000 = one
  // CPU, 2500 = two and a half). 0: no quota.
  uint32_t cpu_millis = 0;
  // Memory the group may use (guest RAM + VMM overhead). 0: no limit.
  uint64_t memory_bytes = 0;
  // Processes and threads in the group. 0: no limit.
  uint32_t pids_max = 0;
};

// Where sbx's cgroups live: under `parent` ("sbx") of the host's
// hierarchy (or hierarchies).
class CgroupRoot {
 public:
  enum class Version { kV1, kV2 };

  // Finds the cgroup filesystem under `mount` (normally /sys/fs/cgroup):
  // v2 when `mount` is a unified hierarchy with the cpu, memory and pids
  // controllers, else v1 with one hierarchy each for cpu, memory and pids.
  // Creates `parent` in it (in each, for v1) and, for v2, enables the
  // controllers for its children. Errors name what is missing.
  static absl::StatusOr<CgroupRoot> Open(std::string mount = "/sys/fs/cgroup",
                                         std::string parent = "sbx");

  Version version() const { return version_; }
  // The parent directories: one (v2) or one per controller (v1).
  const std::vector<std::string>& parent_dirs() const { return parent_dirs_; }

 private:
  CgroupRoot(Version version, std::string mount, std::vector<std::string> dirs)
      : version_(version), mount_(std::move(mount)), parent_dirs_(std::move(dirs)) {}
  friend class Cgroup;

  Version version_;
  std::string mount_;
  // v2: {parent}; v1: {cpu parent, memory parent, pids parent}.
  std::vector<std::string> parent_dirs_;
};

// One sandbox's cgroup. Remove() (or the destructor) kills what is left in
// it and removes its directories.
class Cgroup {
 public:
  // Names are what sandboxd makes of sandbox ids: 1 to 64 of [a-z0-9-_],
  // so no name can reach outside the parent.
  static absl::Status ValidateName(std::string_view name);

  // Creates the group (refusing one that exists: a leftover of a crashed
  // daemon is the caller's to reap) and applies `limits`.
  static absl::StatusOr<std::unique_ptr<Cgroup>> Create(
      const CgroupRoot& root, std::string_view name, const CgroupLimits& limits);
  // Takes over a group that exists (after a daemon restart).
  static absl::StatusOr<std::unique_ptr<Cgroup>> Adopt(const CgroupRoot& root,
                                                       std::string_view name);
  ~Cgroup();

  // Moves `pid` (and, for v1 and v2 alike, only that process; its later
  // children follow it) into the group.
  absl::Status AddProcess(pid_t pid);
  // The processes in the group now.
  absl::StatusOr<std::vector<pid_t>> Processes() const;
  // Memory the group uses now, in bytes.
  absl::StatusOr<uint64_t> MemoryUsage() const;

  // SIGKILLs every process in the group, waits (up to 5 s) until it is
  // empty and removes its directories. Idempotent.
  absl::Status Remove();

  // Forgets the group without touching it: the destructor then leaves it,
  // and what runs in it, alone (a VM that outlives this sandboxd, for the
  // next one to Adopt). AddProcess and Remove do nothing afterwards.
  void Release() { removed_ = true; }

  const std::vector<std::string>& dirs() const { return dirs_; }

 private:
  Cgroup(CgroupRoot::Version version, std::vector<std::string> dirs)
      : version_(version), dirs_(std::move(dirs)) {}
  absl::Status Apply(const CgroupLimits& limits);

  CgroupRoot::Version version_;
  // v2: {dir}; v1: {cpu dir, memory dir, pids dir}.
  std::vector<std::string> dirs_;
  bool removed_ = false;
};

}  // namespace sbx::sandboxd

#endif  // SBX_SANDBOXD_CGROUP_CGROUP_H_
