#ifndef SBX_VMM_CONFIG_H_
#define SBX_VMM_CONFIG_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "vmm/boot/kernel_loader.h"
#include "vmm/seccomp/policy.h"

namespace sbx::vmm {

struct DiskConfig {
  std::string path;
  bool read_only = false;
};

// The virtio-vsock device: host processes reach guest ports through the
// unix socket `uds_path` ("CONNECT <port>\n"), and guest connections to
// host port P go to "<uds_path>_<P>".
struct VsockConfig {
  std::string uds_path;
  uint64_t guest_cid = 3;
};

// Everything a VM is made from. Paths are host paths.
struct MachineConfig {
  std::string kernel;
  // Disks in the order the guest sees them (/dev/vda, vdb, ...). A rootfs
  // given with --rootfs comes first, read-only, and adds "root=/dev/vda ro".
  std::vector<DiskConfig> disks;
  bool has_rootfs = false;
  int cpus = 1;
  uint64_t memory_mib = 256;
  std::string extra_cmdline;
  std::string console;  // file to write the serial console to; "" = stdout
  // A console file stops growing at this size (a guest that prints forever
  // fills this much of the host's disk, not all of it); 0: no bound. Not
  // applied to stdout.
  uint64_t console_max_bytes = uint64_t{16} << 20;
  BootPreference boot = BootPreference::kAuto;
  bool rng = true;
  std::optional<VsockConfig> vsock;
  std::string kvm_device = "/dev/kvm";
  // sbx-vmm --restore DIR: start from the snapshot in DIR instead of
  // booting `kernel`. The snapshot fixes everything else; `disks` (paths,
  // in the snapshot's order), `vsock` (its socket path) and `console` given
  // with it replace the snapshot's.
  std::string restore_dir;
  // sbx-vmm --control PATH: serve the control channel (vmm/control_server.h)
  // on unix socket PATH; "" = none. Allowed with --restore.
  std::string control_path;
  // sbx-vmm --restore DIR --record-working-set MS: instead of serving the
  // VM, run it for MS milliseconds, write the pages it touched as DIR's
  // `workingset` (vmm/snapshot/working_set.h) and exit. Unset: not asked.
  std::optional<uint64_t> record_working_set_ms;
  // sbx-vmm --restore DIR --no-prefetch: ignore DIR's `workingset`.
  bool prefetch = true;
  // sbx-vmm ... --snapshot-when-ready DIR: boot, wait until the guest
  // agent answers over vsock (at most ready_timeout_s), Sync, snapshot
  // into DIR, exit (vmm/template.h). With --record-working-set MS, then
  // also record the snapshot's working set.
  std::string snapshot_when_ready_dir;
  uint64_t ready_timeout_s = 300;
  // Seccomp filters per thread role (vmm/seccomp/policy.h), installed by
  // Machine::Run on the VM's threads. The library default is off (tests and
  // benchmarks drive Machine in-process); sbx-vmm --seccomp MODE defaults
  // to kill.
  seccomp::Options seccomp;
};

inline constexpr int kMaxVcpus = 32;
inline constexpr uint64_t kMinMemoryMib = 16;

// Parses sbx-vmm's arguments (argv[0] excluded). Errors name the flag.
absl::StatusOr<MachineConfig> ParseArgs(const std::vector<std::string>& args);

// The usage text for --help and for errors.
std::string Usage();

// Checks what can be checked before a VM exists: vCPU count, memory size
// against the minimum and the host's RAM (`host_memory_bytes`), that the
// kernel and every disk can be opened (disks read-write unless read-only),
// the vsock CID and socket path (its directory exists, it fits a unix socket
// address with a "_<port>" suffix, nothing but a stale socket is there).
// Errors are kInvalidArgument and say which input is wrong.
absl::Status ValidateConfig(const MachineConfig& config,
                            uint64_t host_memory_bytes);
// As ValidateConfig, less the kernel: for a VM restored from a snapshot.
absl::Status ValidateRestoredConfig(const MachineConfig& config,
                                    uint64_t host_memory_bytes);

// MemTotal from /proc/meminfo, in bytes.
absl::StatusOr<uint64_t> HostMemoryBytes();

}  // namespace sbx::vmm

#endif  // SBX_VMM_CONFIG_H_
