#ifndef SBX_SANDBOXD_VM_PROCESS_H_
#define SBX_SANDBOXD_VM_PROCESS_H_

#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "sandboxd/cgroup/cgroup.h"
#include "sandboxd/vm.h"
#include "sandboxd/vmm_jail.h"

// The product's VmBackend: one sbx-vmm process per VM (vmm/README.md),
// watched through a pidfd, in its own cgroup, driven through its control
// socket (vmm/control_client.h) and the guest agent behind its vsock
// device (guest/client.h).
//
// Files of a VM in VmSpec::dir: vm/, the VMM's own directory and all it
// may write (jailed, it is owned by the VMM's uid): vsock.sock (the vsock
// device's socket; the guest's connections to host port P would go to
// vsock.sock_P), control.sock, console.log (the guest's serial console),
// snapshot.new (a Sleep's snapshot while it is written); vmm.log (the
// VMM's own stderr, written through a descriptor sandboxd opened); jail/
// (a jailed VMM's root: empty mount points). Each Start moves the previous
// run's console.log and vmm.log to *.prev, so both stay bounded and an
// error shows this run's. sandboxd treats what is in vm/ as hostile: it
// reads no symlink there, and connects to the sockets its VMM first made.
//
// Destroying a Vm leaves its VMM running (a restarted sandboxd adopts it);
// Sleep or Kill end it.

namespace sbx::sandboxd {

struct VmmBackendOptions {
  // The sbx-vmm binary. Adopt also takes a process for sbx-vmm when its
  // executable has this file's name.
  std::string vmm_binary;
  // Where the VMs' cgroups go; nullopt: no cgroups (VmSpec::cgroup_name is
  // then ignored).
  std::optional<CgroupRoot> cgroups;
  // Jail every sbx-vmm (sandboxd/jail): namespaces, a root holding only
  // what that VMM needs, a uid of its own from this range, no
  // capabilities, rlimits. Needs root and a static sbx-vmm. nullopt: each
  // sbx-vmm runs as sandboxd's own user, seeing all it sees (--no-jail).
  std::optional<VmmJailOptions> jail;
  // For tests and debugging only: appended to every sbx-vmm's command line
  // (e.g. the hidden --seccomp-test-forbidden-syscall ROLE).
  std::vector<std::string> extra_vmm_args;
  // The guest agent's vsock port (guest/: 1024).
  uint32_t agent_port = 1024;
  // BuildTemplate: record the template's working set over this many ms
  // after the snapshot (restores then prefetch it); 0: none.
  uint64_t template_working_set_ms = 2000;
  // Sleep: how long the VMM may take to exit after Shutdown before it is
  // SIGKILLed.
  uint64_t exit_timeout_ms = 30'000;
  // Sleep: the whole of it (Sync, Pause, snapshot, Shutdown) may take this
  // long; past it the VMM is killed, which fails every call still blocked
  // on it (a wedged guest or VMM must not hold a sandbox mid-sleep).
  uint64_t sleep_timeout_ms = 300'000;
  // BuildTemplate: how often `progress` hears how long the boot has taken.
  uint64_t progress_interval_ms = 5'000;
};

// REQUIRES: options.vmm_binary names the sbx-vmm binary (checked when a VM
// starts: a missing one is a Start error, not a crash).
std::unique_ptr<VmBackend> NewVmmBackend(VmmBackendOptions options);

// Makes a sandbox's writable disk at `path`: a sparse file of `slot_bytes`
// (the template's TemplateBuild::disk_slot_bytes: the capacity its
// snapshot recorded) holding an ext4 filesystem of `fs_mib` MiB, the
// sandbox's disk quota (writes beyond it fail in the guest with ENOSPC),
// labelled sbx-upper, with a journal (a VMM that dies leaves a disk that
// e2fsck -p and the journal bring back), no blocks reserved for root, and
// room to be grown later (resize2fs) up to the slot. Costs a few MiB of
// host disk until the guest writes. Runs the host's mkfs.ext4 (e2fsprogs).
// Errors: kAlreadyExists when `path` exists (it is never overwritten),
// kInvalidArgument for sizes that do not fit (fs_mib 16 or more, at most
// the slot; the slot a multiple of 512 bytes), kInternal with mkfs.ext4's
// output when it fails. On error nothing is left at `path`.
absl::Status MakeSandboxDisk(const std::string& path, uint64_t slot_bytes,
                             uint64_t fs_mib);

// The pieces below are what NewVmmBackend's VMs are made of, exposed for
// tests.

// sbx-vmm's command line for Start: `--restore spec.snapshot_dir`, one
// `--disk` per spec.disks, and the VM's files in spec.dir.
std::vector<std::string> RestoreArgv(const std::string& vmm_binary,
                                     const VmSpec& spec);

// sbx-vmm's command line for a template built in `dir` (a temporary
// directory BuildTemplate later renames to spec.dir): the guest boots
// with sbx.upper=late, its writable disk slot `dir`/disk.img untouched.
std::vector<std::string> TemplateArgv(const std::string& vmm_binary,
                                      const TemplateSpec& spec,
                                      const std::string& dir,
                                      uint64_t working_set_ms);

// The start time (field 22, in clock ticks since boot) from the text of
// /proc/PID/stat. The command name (field 2) may hold spaces and ')':
// fields are counted from its last ')'.
absl::StatusOr<uint64_t> ParseStartTicks(std::string_view stat);

// ParseStartTicks of /proc/`pid`/stat; kNotFound when there is no such
// process.
absl::StatusOr<uint64_t> ProcessStartTicks(pid_t pid);

// How a process ended (siginfo's si_code, CLD_*, as `how` and its
// si_status as `status`) reads for a person: "exited with status 2",
// "killed by signal 9 (SIGKILL)".
std::string DescribeExit(int how, int status);

}  // namespace sbx::sandboxd

#endif  // SBX_SANDBOXD_VM_PROCESS_H_
