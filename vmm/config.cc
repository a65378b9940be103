#include "vmm/config.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <cstring>
#include <fstream>
#include <string>

#include "base/unique_fd.h"

namespace sbx::vmm {
namespace {

absl::Status BadInput(const std::string& message) {
  return absl::InvalidArgumentError(message);
}

template <typename T>
absl::StatusOr<T> ParseNumber(const std::string& flag, const std::string& text) {
  T value{};
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc() || end != text.data() + text.size()) {
    return BadInput(flag + ": '" + text + "' is not a number");
  }
  return value;
}

absl::Status CheckOpenable(const std::string& what, const std::string& path,
                           int flags) {
  UniqueFd fd(::open(path.c_str(), flags | O_CLOEXEC));
  if (!fd.valid()) {
    return BadInput(what + " " + path + ": " + std::strerror(errno));
  }
  return absl::OkStatus();
}

absl::Status ValidateVsock(const VsockConfig& vsock) {
  const std::string& path = vsock.uds_path;
  // The guest CID is 32 bits (virtio 1.2 §5.10.4); 0-2 are reserved and
  // 0xffffffff is VMADDR_CID_ANY.
  if (vsock.guest_cid < 3 || vsock.guest_cid > 0xffff'fffe) {
    return BadInput("--vsock cid=" + std::to_string(vsock.guest_cid) +
                    ": must be 3 to 4294967294");
  }
  // Guest connections to host port P go to PATH_P: that must fit too.
  const size_t max = sizeof(sockaddr_un::sun_path) - 1 - sizeof("_4294967295") + 1;
  if (path.size() > max) {
    return BadInput("--vsock " + path + ": longer than " + std::to_string(max) +
                    " bytes");
  }
  const size_t slash = path.rfind('/');
  const std::string dir = slash == std::string::npos ? "."
                          : slash == 0              ? "/"
                                                    : path.substr(0, slash);
  struct stat st;
  if (::stat(dir.c_str(), &st) != 0) {
    return BadInput("--vsock " + path + ": directory " + dir + ": " +
                    std::strerror(errno));
  }
  if (!S_ISDIR(st.st_mode)) {
    return BadInput("--vsock " + path + ": " + dir + " is not a directory");
  }
  if (::lstat(path.c_str(), &st) == 0 && !S_ISSOCK(st.st_mode)) {
    return BadInput("--vsock " + path + ": exists and is not a socket");
  }
  return absl::OkStatus();
}

absl::Status ValidateConfigImpl(const MachineConfig& config,
                                uint64_t host_memory_bytes, bool check_kernel);

}  // namespace

std::string Usage() {
  return "usage: sbx-vmm --kernel FILE [--rootfs FILE] [--disk FILE[,ro]]...\n"
         "               [--cpus N] [--memory-mib M] [--cmdline \"ARGS\"]\n"
         "               [--console FILE] [--boot auto|pvh|linux64] [--no-rng]\n"
         "               [--vsock PATH[,cid=N]] [--control PATH]\n"
         "               [--snapshot-when-ready DIR [--ready-timeout S]\n"
         "                [--record-working-set MS]]\n"
         "       sbx-vmm --restore DIR [--disk FILE]... [--vsock PATH]\n"
         "               [--console FILE] [--control PATH]\n"
         "               [--no-prefetch | --record-working-set MS]\n"
         "       either form: [--seccomp kill|log|off]\n"
         "\n"
         "Boots FILE (an uncompressed ELF vmlinux or a bzImage) in a KVM VM.\n"
         "  --restore DIR   instead, resume the VM snapshotted in DIR (its\n"
         "                  vmstate and memory files); --disk (one per snapshot\n"
         "                  disk, in order), --vsock and --console move those\n"
         "                  elsewhere, the rest comes from the snapshot\n"
         "                  (a diff snapshot: over its base, found where the\n"
         "                  diff recorded it)\n"
         "  --no-prefetch   with --restore: do not pre-fault the pages listed in\n"
         "                  DIR/workingset (by default they are, in the\n"
         "                  background, while the vCPUs run)\n"
         "  --record-working-set MS\n"
         "                  with --restore (of a full snapshot): run the VM for\n"
         "                  MS ms, write the guest pages it touched to\n"
         "                  DIR/workingset, then stop it and exit 0\n"
         "  --snapshot-when-ready DIR\n"
         "                  make a template: boot, wait until the guest agent\n"
         "                  answers on vsock port 1024 (needs --vsock; at most\n"
         "                  --ready-timeout S seconds, default 300), ask it to\n"
         "                  Sync, pause, write a full snapshot into DIR, exit 0\n"
         "                  (6 if the agent never answered); with\n"
         "                  --record-working-set MS also DIR's working set\n"
         "  --control PATH  serve the control channel on unix socket PATH\n"
         "                  (mode 0600; protobuf frames, proto/control.proto):\n"
         "                  Pause, Resume, Snapshot (full or diff), Shutdown,\n"
         "                  Stats\n"
         "  --seccomp MODE  syscall filters per VMM thread (vmm/README.md):\n"
         "                  kill (default: a forbidden call kills the VMM\n"
         "                  with SIGSYS), log (allowed, logged by the\n"
         "                  kernel; development), off (UNSAFE: debugging)\n"
         "  --rootfs FILE   read-only root disk (/dev/vda, adds root=/dev/vda ro)\n"
         "  --disk FILE     another virtio-blk disk, read-write (,ro: read-only)\n"
         "  --cpus N        vCPUs, 1 to 32 (default 1)\n"
         "  --memory-mib M  guest RAM in MiB, at least 16 (default 256)\n"
         "  --cmdline ARGS  more kernel parameters\n"
         "  --console FILE  write the serial console to FILE (default stdout)\n"
         "  --console-max-bytes N  the console FILE stops growing at N bytes\n"
         "                  (default 16777216; 0: no bound)\n"
         "  --boot P        entry protocol (default auto: PVH when the ELF has it)\n"
         "  --no-rng        no virtio-rng device\n"
         "  --vsock PATH    virtio-vsock, guest CID 3 (,cid=N: N >= 3): host\n"
         "                  processes connect to unix socket PATH and write\n"
         "                  \"CONNECT <port>\\n\" to reach a guest port; guest\n"
         "                  connections to host port P go to PATH_P\n"
         "Exit status: 0 the guest rebooted (its way to end the VM) or a\n"
         "control client asked for Shutdown, 1 VMM\n"
         "error, 2 bad input, 3 triple fault, 4 KVM internal error, 5 VM entry\n"
         "failure, 6 --snapshot-when-ready: the agent did not answer in time.\n";
}

absl::StatusOr<MachineConfig> ParseArgs(const std::vector<std::string>& args) {
  MachineConfig config;
  config.seccomp.mode = seccomp::Mode::kKill;  // sbx-vmm filters by default
  // The first flag given that a snapshot fixes (for --restore's error).
  bool fixed_by_snapshot = false;
  std::string first_fixed;
  for (size_t i = 0; i < args.size(); ++i) {
    std::string flag = args[i];
    // The seccomp flags also take --flag=VALUE.
    std::optional<std::string> inline_value;
    if (flag.starts_with("--seccomp")) {
      if (size_t eq = flag.find('='); eq != std::string::npos) {
        inline_value = flag.substr(eq + 1);
        flag.resize(eq);
      }
    }
    auto value = [&]() -> absl::StatusOr<std::string> {
      if (inline_value.has_value()) return *inline_value;
      if (i + 1 >= args.size()) return BadInput(flag + " needs a value");
      return args[++i];
    };
    if (flag == "--seccomp") {
      absl::StatusOr<std::string> v = value();
      if (!v.ok()) return v.status();
      std::optional<seccomp::Mode> mode = seccomp::ParseMode(*v);
      if (!mode.has_value()) {
        return BadInput("--seccomp: '" + *v + "' is not kill, log or off");
      }
      config.seccomp.mode = *mode;
    } else if (flag == "--seccomp-test-forbidden-syscall") {
      // Hidden, for tests: that thread makes a forbidden system call.
      absl::StatusOr<std::string> v = value();
      if (!v.ok()) return v.status();
      std::optional<seccomp::Role> role = seccomp::ParseRole(*v);
      if (!role.has_value()) {
        return BadInput(flag + ": '" + *v +
                        "' is not vcpu, loop, control, main or prefetch");
      }
      config.seccomp.test_violation = *role;
    } else if (flag == "--kernel") {
      absl::StatusOr<std::string> v = value();
      if (!v.ok()) return v.status();
      config.kernel = *v;
    } else if (flag == "--rootfs") {
      absl::StatusOr<std::string> v = value();
      if (!v.ok()) return v.status();
      if (config.has_rootfs) return BadInput("--rootfs given twice");
      config.disks.insert(config.disks.begin(), DiskConfig{*v, true});
      config.has_rootfs = true;
    } else if (flag == "--disk") {
      absl::StatusOr<std::string> v = value();
      if (!v.ok()) return v.status();
      DiskConfig disk{*v, false};
      if (disk.path.size() > 3 && disk.path.ends_with(",ro")) {
        disk.path.resize(disk.path.size() - 3);
        disk.read_only = true;
      }
      if (disk.path.empty()) return BadInput("--disk needs a file");
      config.disks.push_back(disk);
    } else if (flag == "--cpus") {
      absl::StatusOr<std::string> v = value();
      if (!v.ok()) return v.status();
      absl::StatusOr<int> n = ParseNumber<int>(flag, *v);
      if (!n.ok()) return n.status();
      config.cpus = *n;
    } else if (flag == "--memory-mib") {
      absl::StatusOr<std::string> v = value();
      if (!v.ok()) return v.status();
      absl::StatusOr<uint64_t> n = ParseNumber<uint64_t>(flag, *v);
      if (!n.ok()) return n.status();
      config.memory_mib = *n;
    } else if (flag == "--cmdline") {
      absl::StatusOr<std::string> v = value();
      if (!v.ok()) return v.status();
      config.extra_cmdline = *v;
    } else if (flag == "--console") {
      absl::StatusOr<std::string> v = value();
      if (!v.ok()) return v.status();
      config.console = *v;
    } else if (flag == "--console-max-bytes") {
      absl::StatusOr<std::string> v = value();
      if (!v.ok()) return v.status();
      absl::StatusOr<uint64_t> n = ParseNumber<uint64_t>(flag, *v);
      if (!n.ok()) return n.status();
      config.console_max_bytes = *n;
    } else if (flag == "--boot") {
      absl::StatusOr<std::string> v = value();
      if (!v.ok()) return v.status();
      if (*v == "auto") {
        config.boot = BootPreference::kAuto;
      } else if (*v == "pvh") {
        config.boot = BootPreference::kPvh;
      } else if (*v == "linux64") {
        config.boot = BootPreference::kLinux64;
      } else {
        return BadInput("--boot: '" + *v + "' is not auto, pvh or linux64");
      }
    } else if (flag == "--restore") {
      absl::StatusOr<std::string> v = value();
      if (!v.ok()) return v.status();
      if (v->empty()) return BadInput("--restore needs a directory");
      config.restore_dir = *v;
    } else if (flag == "--control") {
      absl::StatusOr<std::string> v = value();
      if (!v.ok()) return v.status();
      if (v->empty()) return BadInput("--control needs a socket path");
      if (!config.control_path.empty()) return BadInput("--control given twice");
      config.control_path = *v;
    } else if (flag == "--snapshot-when-ready") {
      absl::StatusOr<std::string> v = value();
      if (!v.ok()) return v.status();
      if (v->empty()) return BadInput("--snapshot-when-ready needs a directory");
      config.snapshot_when_ready_dir = *v;
    } else if (flag == "--ready-timeout") {
      absl::StatusOr<std::string> v = value();
      if (!v.ok()) return v.status();
      absl::StatusOr<uint64_t> s = ParseNumber<uint64_t>(flag, *v);
      if (!s.ok()) return s.status();
      if (*s == 0 || *s > 86'400) return BadInput("--ready-timeout: 1 to 86400 s");
      config.ready_timeout_s = *s;
    } else if (flag == "--no-prefetch") {
      config.prefetch = false;
    } else if (flag == "--record-working-set") {
      absl::StatusOr<std::string> v = value();
      if (!v.ok()) return v.status();
      absl::StatusOr<uint64_t> ms = ParseNumber<uint64_t>(flag, *v);
      if (!ms.ok()) return ms.status();
      if (*ms == 0 || *ms > 600'000) {
        return BadInput("--record-working-set: between 1 and 600000 ms");
      }
      config.record_working_set_ms = *ms;
    } else if (flag == "--no-rng") {
      config.rng = false;
    } else if (flag == "--vsock") {
      absl::StatusOr<std::string> v = value();
      if (!v.ok()) return v.status();
      if (config.vsock.has_value()) return BadInput("--vsock given twice");
      VsockConfig vsock;
      vsock.uds_path = *v;
      if (size_t at = v->rfind(",cid="); at != std::string::npos) {
        vsock.uds_path = v->substr(0, at);
        absl::StatusOr<uint64_t> cid =
            ParseNumber<uint64_t>("--vsock cid", v->substr(at + 5));
        if (!cid.ok()) return cid.status();
        vsock.guest_cid = *cid;
      }
      if (vsock.uds_path.empty()) return BadInput("--vsock needs a socket path");
      config.vsock = vsock;
    } else {
      return BadInput("unknown argument '" + flag + "'");
    }
    fixed_by_snapshot |= flag != "--restore" && flag != "--disk" &&
                         flag != "--vsock" && flag != "--console" &&
                         flag != "--console-max-bytes" &&
                         flag != "--control" && flag != "--no-prefetch" &&
                         flag != "--record-working-set" &&
                         flag != "--seccomp" &&
                         flag != "--seccomp-test-forbidden-syscall";
    if (fixed_by_snapshot && first_fixed.empty()) first_fixed = flag;
  }
  if (!config.snapshot_when_ready_dir.empty()) {
    if (!config.restore_dir.empty()) {
      return BadInput("--snapshot-when-ready boots a VM: not with --restore");
    }
    if (!config.vsock.has_value()) {
      return BadInput("--snapshot-when-ready needs --vsock (the agent answers over it)");
    }
    if (!config.control_path.empty()) {
      return BadInput("--snapshot-when-ready and --control: pick one");
    }
    if (!config.prefetch) return BadInput("--no-prefetch needs --restore");
  }
  if ((config.record_working_set_ms.has_value() || !config.prefetch) &&
      config.restore_dir.empty() && config.snapshot_when_ready_dir.empty()) {
    return BadInput(config.prefetch ? "--record-working-set needs --restore or "
                                      "--snapshot-when-ready"
                                    : "--no-prefetch needs --restore");
  }
  if (config.record_working_set_ms.has_value() && !config.prefetch) {
    return BadInput("--record-working-set and --no-prefetch: pick one "
                    "(a recording restore never prefetches)");
  }
  if (!config.restore_dir.empty()) {
    if (fixed_by_snapshot) {
      return BadInput(first_fixed +
                      " cannot be used with --restore: the snapshot fixes it");
    }
    return config;
  }
  if (config.kernel.empty()) return BadInput("--kernel is required");
  return config;
}

absl::Status ValidateConfig(const MachineConfig& config,
                            uint64_t host_memory_bytes) {
  return ValidateConfigImpl(config, host_memory_bytes, /*check_kernel=*/true);
}

absl::Status ValidateRestoredConfig(const MachineConfig& config,
                                    uint64_t host_memory_bytes) {
  return ValidateConfigImpl(config, host_memory_bytes, /*check_kernel=*/false);
}

namespace {

absl::Status ValidateConfigImpl(const MachineConfig& config,
                                uint64_t host_memory_bytes, bool check_kernel) {
  if (config.cpus < 1 || config.cpus > kMaxVcpus) {
    return BadInput("--cpus " + std::to_string(config.cpus) +
                    ": must be 1 to " + std::to_string(kMaxVcpus));
  }
  if (config.memory_mib < kMinMemoryMib) {
    return BadInput("--memory-mib " + std::to_string(config.memory_mib) +
                    ": the minimum is " + std::to_string(kMinMemoryMib));
  }
  uint64_t host_mib = host_memory_bytes >> 20;
  if (config.memory_mib > host_mib) {
    return BadInput("--memory-mib " + std::to_string(config.memory_mib) +
                    ": more than this host's " + std::to_string(host_mib) +
                    " MiB of RAM");
  }
  if (check_kernel) {
    if (absl::Status s = CheckOpenable("--kernel", config.kernel, O_RDONLY);
        !s.ok()) {
      return s;
    }
  }
  for (const DiskConfig& disk : config.disks) {
    absl::Status s = CheckOpenable("disk", disk.path,
                                   disk.read_only ? O_RDONLY : O_RDWR);
    if (!s.ok()) return s;
  }
  if (config.vsock.has_value()) {
    if (absl::Status s = ValidateVsock(*config.vsock); !s.ok()) return s;
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<uint64_t> HostMemoryBytes() {
  std::ifstream meminfo("/proc/meminfo");
  std::string key, unit;
  uint64_t kib;
  while (meminfo >> key >> kib >> unit) {
    if (key == "MemTotal:") return kib * 1024;
  }
  return absl::InternalError("no MemTotal in /proc/meminfo");
}

}  // namespace sbx::vmm
