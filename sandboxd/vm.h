#ifndef SBX_SANDBOXD_VM_H_
#define SBX_SANDBOXD_VM_H_

#include <sys/types.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "guest/client.h"
#include "sandboxd/cgroup/cgroup.h"

// What the sandbox manager needs from a VM, as an interface: the product
// implements it with sbx-vmm processes (vm_process.h); the manager's unit
// tests with a fake. Every path here is a host path.

namespace sbx::sandboxd {

// One sandbox VM to start from a snapshot.
struct VmSpec {
  // The sandbox's own directory: the VM's sockets and console go here
  // (vsock.sock, control.sock, console.log).
  std::string dir;
  // The snapshot to restore: the template's full snapshot for a new
  // sandbox, the sandbox's diff snapshot to wake it.
  std::string snapshot_dir;
  // The template's full snapshot: what every diff snapshot of this sandbox
  // is taken against.
  std::string template_snapshot_dir;
  // The disks in the snapshot's order: the template's read-only rootfs,
  // then the sandbox's writable disk (MakeSandboxDisk of vm_process.h: of
  // the template's TemplateBuild::disk_slot_bytes, the size the snapshot
  // recorded).
  std::vector<std::string> disks;
  // The guest device of the sandbox's writable disk ("/dev/vdb"), for a
  // restore of the TEMPLATE's snapshot (a new sandbox, or one whose VMM
  // died and whose own snapshot is gone or stale): Start then has the
  // agent attach it (AttachDisk: e2fsck, mount, the overlay root) right
  // after AfterRestore. Empty for a wake from the sandbox's own snapshot,
  // whose guest has the disk mounted already.
  std::string attach_device;
  // cgroup name (a sandbox id) and limits; an empty name: no cgroup.
  std::string cgroup_name;
  CgroupLimits limits;
  // Fresh entropy and the host clock go to the guest after every restore
  // (agent AfterRestore), so clones of one template never share RNG state.
  // How long the restored guest's agent may take to answer.
  uint64_t ready_timeout_ms = 120'000;
};

// What is needed to find a running VM again after a sandboxd restart; the
// manager keeps it in the sandbox's record.
struct VmHandle {
  pid_t pid = 0;
  // The process's start time (/proc/PID/stat field 22): a recycled pid is
  // not our VMM.
  uint64_t start_ticks = 0;
};

// A running sandbox VM. Thread-safe: agent calls run concurrently with
// each other; Sleep and Kill end the VM. Destroying a Vm does not: its VMM
// runs on (for Adopt after a sandboxd restart).
class Vm {
 public:
  virtual ~Vm() = default;

  // The guest agent (one connection per operation).
  virtual agent::Client& agent() = 0;

  virtual VmHandle handle() const = 0;

  // Whether the VMM process still runs. When it does not: why it ended
  // (exit code or signal), for the sandbox's failure reason.
  virtual bool Alive(std::string* why_not) = 0;

  // Agent Sync, pause, diff snapshot against the template into
  // `snapshot_dir` (written beside it and renamed into place when
  // complete: a failed sleep leaves an older snapshot as it was), then
  // ends the VMM and waits for it. On error the VM is left running if it
  // can be (the caller decides to retry or kill).
  virtual absl::Status Sleep(const std::string& snapshot_dir) = 0;

  // SIGKILLs the VMM (and its cgroup) and waits for it. Idempotent.
  virtual void Kill() = 0;
};

// A template to build: boot once, wait for the agent, snapshot.
struct TemplateSpec {
  std::string dir;  // the template's directory: snapshot/, disk.img, ...
  std::string kernel;
  std::string rootfs;
  uint32_t vcpus = 1;
  uint64_t memory_mib = 512;
  // The largest writable disk a sandbox of this template may have: the
  // template boots (with sbx.upper=late, not touching it) with a sparse
  // disk of this size, whose capacity its kernel, and so its snapshot,
  // keeps. Every sandbox's disk has this apparent size, with an ext4 of
  // its own quota inside (MakeSandboxDisk). Costs no space.
  uint64_t disk_mib = 65536;
  uint64_t ready_timeout_ms = 600'000;
};

struct TemplateBuild {
  std::string snapshot_dir;  // dir/snapshot
  // dir/disk.img: the template's empty disk slot (sparse, never written);
  // sandboxes get disks of their own with MakeSandboxDisk.
  std::string disk;
  // Its size in bytes (TemplateSpec::disk_mib MiB): every sandbox disk's.
  uint64_t disk_slot_bytes = 0;
  double seconds = 0;
};

class VmBackend {
 public:
  virtual ~VmBackend() = default;

  // Starts a VM from spec.snapshot_dir and returns once its agent
  // answered and took AfterRestore (and, with spec.attach_device, attached
  // the writable disk). Errors: kInvalidArgument for a bad
  // spec, kDeadlineExceeded when the agent did not answer in time,
  // kUnavailable/kInternal when the VMM failed (with its console's tail).
  // Nothing is left running on error.
  virtual absl::StatusOr<std::unique_ptr<Vm>> Start(const VmSpec& spec) = 0;

  // Takes over a VM a previous sandboxd started (same spec). kNotFound when
  // the process is gone or is not that VMM; kUnavailable when it is, but its
  // agent does not answer (that VMM is then killed: nothing is left
  // running on error).
  virtual absl::StatusOr<std::unique_ptr<Vm>> Adopt(const VmSpec& spec,
                                                    const VmHandle& handle) = 0;

  // Builds a template; `progress` gets a line for a person at each step.
  virtual absl::StatusOr<TemplateBuild> BuildTemplate(
      const TemplateSpec& spec,
      const std::function<void(const std::string&)>& progress) = 0;
};

}  // namespace sbx::sandboxd

#endif  // SBX_SANDBOXD_VM_H_
