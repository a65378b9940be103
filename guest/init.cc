#include "guest/init.h"

#include <fcntl.h>
#include <net/if.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <sstream>
#include <vector>

#include "absl/strings/numbers.h"
#include "base/logging.h"
#include "base/status.h"
#include "base/status_macros.h"
#include "base/unique_fd.h"

namespace sbx::agent {
namespace {

// Staging area on the read-only root (Debian's rootfs has /mnt): a tmpfs
// holding the upper layer's mount point and the new root.
constexpr char kStage[] = "/mnt";
constexpr char kUpperMount[] = "/mnt/upper";
constexpr char kNewRoot[] = "/mnt/root";

absl::Status Mount(const char* source, const char* target, const char* type,
                   unsigned long flags, const char* data = nullptr) {
  if (mount(source, target, type, flags, data) != 0) {
    return ErrnoStatus(std::string("mount ") + (type ? type : source), target,
                       errno);
  }
  return absl::OkStatus();
}

absl::Status MakeDir(const char* path, mode_t mode) {
  if (mkdir(path, mode) != 0 && errno != EEXIST) {
    return ErrnoStatus("mkdir", path, errno);
  }
  return absl::OkStatus();
}

// True when `device` holds an ext2/3/4 superblock (magic 0xEF53 at byte
// 1080).
absl::StatusOr<bool> HasExtFilesystem(const std::string& device) {
  UniqueFd fd(open(device.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) return ErrnoStatus("open", device, errno);
  unsigned char magic[2];
  if (pread(fd.get(), magic, sizeof(magic), 1080) != sizeof(magic)) {
    return false;  // too small to hold one
  }
  return magic[0] == 0x53 && magic[1] == 0xEF;
}

// Runs a program of the root filesystem to completion (before the agent's
// reaper exists).
absl::Status RunProgram(std::vector<std::string> argv) {
  std::vector<char*> ptrs;
  for (std::string& arg : argv) ptrs.push_back(arg.data());
  ptrs.push_back(nullptr);
  char path_env[] = "PATH=/usr/sbin:/usr/bin:/sbin:/bin";
  char* envp[] = {path_env, nullptr};
  pid_t pid = fork();
  if (pid < 0) return ErrnoStatus("fork", errno);
  if (pid == 0) {
    execve(ptrs[0], ptrs.data(), envp);
    _exit(127);
  }
  int status = 0;
  while (waitpid(pid, &status, 0) < 0) {
    if (errno != EINTR) return ErrnoStatus("waitpid", errno);
  }
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    return absl::InternalError(argv[0] + " failed (wait status " +
                               std::to_string(status) + ")");
  }
  return absl::OkStatus();
}

absl::Status MountUpper(const GuestParams& params) {
  if (params.upper_device.empty()) {
    SBX_LOG(WARNING) << "no writable disk (sbx.upper): changes to / live in "
                        "memory and are lost when the VM ends";
    return Mount("upper", kUpperMount, "tmpfs", 0, "mode=0755");
  }
  const std::string& device = params.upper_device;
  SBX_ASSIGN_OR_RETURN(bool formatted, HasExtFilesystem(device));
  if (!formatted) {
    SBX_LOG(INFO) << "formatting " << device << " (first use)";
    // lazy_itable_init: the inode tables are zeroed later, in the
    // background, instead of before the first boot can go on.
    SBX_RETURN_IF_ERROR(Annotate(
        RunProgram({"/sbin/mkfs.ext4", "-q", "-F", "-L", "sbx-upper", "-E",
                    "lazy_itable_init=1,lazy_journal_init=1", device}),
        "formatting the writable disk"));
  }
  return Mount(device.c_str(), kUpperMount, "ext4", MS_NOATIME);
}

absl::Status BringUpLoopback() {
  UniqueFd sock(socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  if (!sock) return ErrnoStatus("socket", errno);
  ifreq request = {};
  strncpy(request.ifr_name, "lo", IFNAMSIZ - 1);
  if (ioctl(sock.get(), SIOCGIFFLAGS, &request) != 0) {
    return ErrnoStatus("SIOCGIFFLAGS", "lo", errno);
  }
  request.ifr_flags |= IFF_UP;
  if (ioctl(sock.get(), SIOCSIFFLAGS, &request) != 0) {
    return ErrnoStatus("SIOCSIFFLAGS", "lo", errno);
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<GuestParams> ParseGuestParams(const std::string& cmdline) {
  GuestParams params;
  std::istringstream words(cmdline);
  std::string word;
  while (words >> word) {
    if (word.rfind("sbx.", 0) != 0) continue;
    size_t eq = word.find('=');
    std::string key = word.substr(0, eq);
    std::string value = eq == std::string::npos ? "" : word.substr(eq + 1);
    if (key == "sbx.upper") {
      if (value.rfind("/dev/", 0) != 0 || value.find("..") != std::string::npos) {
        return absl::InvalidArgumentError("sbx.upper must name a /dev node: " +
                                          value);
      }
      params.upper_device = value;
    } else if (key == "sbx.port") {
      uint32_t port;
      if (!absl::SimpleAtoi(value, &port) || port == 0) {
        return absl::InvalidArgumentError("bad sbx.port: " + value);
      }
      params.port = port;
    } else {
      return absl::InvalidArgumentError("unknown kernel parameter " + key);
    }
  }
  return params;
}

absl::StatusOr<std::string> ReadKernelCmdline() {
  UniqueFd fd(open("/proc/cmdline", O_RDONLY | O_CLOEXEC));
  if (!fd && errno == ENOENT) {
    SBX_RETURN_IF_ERROR(Mount("proc", "/proc", "proc", 0));
    fd.reset(open("/proc/cmdline", O_RDONLY | O_CLOEXEC));
  }
  if (!fd) return ErrnoStatus("open", "/proc/cmdline", errno);
  char buffer[4096];
  ssize_t n = read(fd.get(), buffer, sizeof(buffer) - 1);
  if (n < 0) return ErrnoStatus("read", "/proc/cmdline", errno);
  return std::string(buffer, static_cast<size_t>(n));
}

absl::Status SetUpGuest(const GuestParams& params) {
  // The kernel mounted the root disk read-only and, with
  // CONFIG_DEVTMPFS_MOUNT, /dev.
  if (mount("devtmpfs", "/dev", "devtmpfs", 0, nullptr) != 0 &&
      errno != EBUSY) {
    return ErrnoStatus("mount devtmpfs", "/dev", errno);
  }
  SBX_RETURN_IF_ERROR(Mount("stage", kStage, "tmpfs", 0, "mode=0755"));
  SBX_RETURN_IF_ERROR(MakeDir(kUpperMount, 0755));
  SBX_RETURN_IF_ERROR(MakeDir(kNewRoot, 0755));
  SBX_RETURN_IF_ERROR(MountUpper(params));
  std::string upper = std::string(kUpperMount) + "/upper";
  std::string work = std::string(kUpperMount) + "/work";
  SBX_RETURN_IF_ERROR(MakeDir(upper.c_str(), 0755));
  SBX_RETURN_IF_ERROR(MakeDir(work.c_str(), 0755));
  std::string options = "lowerdir=/,upperdir=" + upper + ",workdir=" + work;
  SBX_RETURN_IF_ERROR(
      Mount("overlay", kNewRoot, "overlay", 0, options.c_str()));

  // Carry /dev and /proc over, then make the overlay the root: pivot_root
  // with the old root stacked on the new one, then detached (it stays alive
  // as the overlay's lower layer).
  std::string new_dev = std::string(kNewRoot) + "/dev";
  SBX_RETURN_IF_ERROR(Mount("/dev", new_dev.c_str(), nullptr, MS_MOVE));
  std::string new_proc = std::string(kNewRoot) + "/proc";
  if (mount("/proc", new_proc.c_str(), nullptr, MS_MOVE, nullptr) != 0) {
    umount2("/proc", MNT_DETACH);
  }
  if (chdir(kNewRoot) != 0) return ErrnoStatus("chdir", kNewRoot, errno);
  if (syscall(SYS_pivot_root, ".", ".") != 0) {
    return ErrnoStatus("pivot_root", kNewRoot, errno);
  }
  if (umount2(".", MNT_DETACH) != 0) {
    return ErrnoStatus("umount", "old root", errno);
  }
  if (chdir("/") != 0) return ErrnoStatus("chdir", "/", errno);

  // The standard mounts. /proc may have come along already.
  if (mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC,
            nullptr) != 0 &&
      errno != EBUSY) {
    return ErrnoStatus("mount proc", "/proc", errno);
  }
  SBX_RETURN_IF_ERROR(
      Mount("sysfs", "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC));
  SBX_RETURN_IF_ERROR(MakeDir("/dev/pts", 0755));
  SBX_RETURN_IF_ERROR(Mount("devpts", "/dev/pts", "devpts",
                            MS_NOSUID | MS_NOEXEC, "mode=0620,ptmxmode=0666"));
  SBX_RETURN_IF_ERROR(MakeDir("/dev/shm", 01777));
  SBX_RETURN_IF_ERROR(Mount("shm", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV,
                            "mode=1777"));
  SBX_RETURN_IF_ERROR(
      Mount("tmp", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777"));
  SBX_RETURN_IF_ERROR(
      Mount("run", "/run", "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755"));
  if (sethostname("sandbox", 7) != 0) {
    SBX_LOG(WARNING) << "sethostname: " << strerror(errno);
  }
  absl::Status lo = BringUpLoopback();
  if (!lo.ok()) SBX_LOG(WARNING) << "loopback: " << lo;
  return absl::OkStatus();
}

}  // namespace sbx::agent
