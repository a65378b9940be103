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
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
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
// A disk whose first 64 KiB are all zero is blank: formatting it destroys
// nothing.
constexpr size_t kBlankCheckBytes = 64 << 10;
// What of a program's output an error quotes.
constexpr size_t kMaxProgramOutput = 8 << 10;

absl::Status Mount(const char* source, const char* target, const char* type,
                   unsigned long flags, const char* data = nullptr) {
  if (mount(source, target, type, flags, data) != 0) {
    return ErrnoStatus(absl::StrCat("mount ", type ? type : source), target,
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

// Whether `path` is the root of a mount: another filesystem than its
// parent's (all the mounts here are).
bool IsMountPoint(const std::string& path) {
  struct stat st, parent;
  const size_t slash = path.find_last_of('/');
  const std::string up =
      slash == 0 || slash == std::string::npos ? std::string("/")
                                               : path.substr(0, slash);
  return stat(path.c_str(), &st) == 0 && stat(up.c_str(), &parent) == 0 &&
         st.st_dev != parent.st_dev;
}

enum class DiskContents { kExt, kBlank, kOther };

// What `device` holds: an ext2/3/4 superblock (magic 0xEF53 at byte
// 1080), nothing (its first 64 KiB all zero), or something else.
absl::StatusOr<DiskContents> InspectDisk(const std::string& device) {
  UniqueFd fd(open(device.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) return ErrnoStatus("open", device, errno);
  std::string head(kBlankCheckBytes, '\0');
  size_t got = 0;
  while (got < head.size()) {
    ssize_t n = pread(fd.get(), head.data() + got, head.size() - got,
                      static_cast<off_t>(got));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return ErrnoStatus("read", device, errno);
    if (n == 0) break;  // a tiny disk
    got += static_cast<size_t>(n);
  }
  head.resize(got);
  if (head.size() > 1081 && static_cast<unsigned char>(head[1080]) == 0x53 &&
      static_cast<unsigned char>(head[1081]) == 0xEF) {
    return DiskContents::kExt;
  }
  return head.find_first_not_of('\0') == std::string::npos
             ? DiskContents::kBlank
             : DiskContents::kOther;
}

std::string DescribeEnd(const ProgramResult& result) {
  return result.signaled ? absl::StrCat("killed by signal ", result.code)
                         : absl::StrCat("exit status ", result.code);
}

// Checks or formats the writable disk `device` and mounts it at
// kUpperMount.
absl::Status MountUpperDisk(const std::string& device,
                            const ProgramRunner& run) {
  SBX_ASSIGN_OR_RETURN(DiskContents contents, InspectDisk(device));
  switch (contents) {
    case DiskContents::kBlank: {
      SBX_LOG(INFO) << "formatting " << device << " (first use)";
      // lazy_itable_init: the inode tables are zeroed later, in the
      // background, instead of before the first boot can go on.
      SBX_ASSIGN_OR_RETURN(
          ProgramResult mkfs,
          run({"/sbin/mkfs.ext4", "-q", "-F", "-L", "sbx-upper", "-E",
               "lazy_itable_init=1,lazy_journal_init=1", device}));
      if (mkfs.signaled || mkfs.code != 0) {
        return absl::InternalError(
            absl::StrCat("formatting the writable disk ", device,
                         ": mkfs.ext4 ", DescribeEnd(mkfs), ": ", mkfs.output));
      }
      break;
    }
    case DiskContents::kOther:
      return absl::FailedPreconditionError(absl::StrCat(
          "the writable disk ", device,
          " holds neither an ext4 filesystem nor zeros: refusing to format "
          "it"));
    case DiskContents::kExt: {
      // After a crash (of the guest or its VMM) the journal is replayed
      // and what it left inconsistent repaired, before anything mounts it.
      SBX_ASSIGN_OR_RETURN(ProgramResult fsck,
                           run({"/sbin/e2fsck", "-p", device}));
      if (fsck.signaled || fsck.code >= 4) {
        return absl::DataLossError(absl::StrCat(
            "the writable disk ", device, " has errors e2fsck -p cannot fix (",
            DescribeEnd(fsck), "): ", fsck.output));
      }
      if (fsck.code != 0) {
        SBX_LOG(WARNING) << "e2fsck -p " << device << " repaired it (exit "
                         << fsck.code << "): "
                         << std::string(absl::StripAsciiWhitespace(fsck.output));
      } else {
        SBX_LOG(INFO) << "e2fsck -p " << device << ": "
                      << std::string(absl::StripAsciiWhitespace(fsck.output));
      }
      break;
    }
  }
  return Mount(device.c_str(), kUpperMount, "ext4", MS_NOATIME);
}

// The tmpfs at kStage with the directories the overlay needs.
absl::Status MountStage() {
  SBX_RETURN_IF_ERROR(Mount("stage", kStage, "tmpfs", 0, "mode=0755"));
  SBX_RETURN_IF_ERROR(MakeDir(kUpperMount, 0755));
  return MakeDir(kNewRoot, 0755);
}

// With the upper layer's filesystem at kUpperMount: makes the overlay of
// the current root (lower) and it (upper) the root, carrying the mounts
// `carry` (those that are mounted) over.
absl::Status PivotToOverlay(const std::vector<std::string>& carry) {
  std::string upper = absl::StrCat(kUpperMount, "/upper");
  std::string work = absl::StrCat(kUpperMount, "/work");
  SBX_RETURN_IF_ERROR(MakeDir(upper.c_str(), 0755));
  SBX_RETURN_IF_ERROR(MakeDir(work.c_str(), 0755));
  std::string options =
      absl::StrCat("lowerdir=/,upperdir=", upper, ",workdir=", work);
  SBX_RETURN_IF_ERROR(
      Mount("overlay", kNewRoot, "overlay", 0, options.c_str()));

  // Move the mounts (with what is mounted below them: /dev/pts, /dev/shm)
  // over, then make the overlay the root: pivot_root with the old root
  // stacked on the new one, then detached (it stays alive as the overlay's
  // lower layer). pivot_root moves the root and cwd of every process that
  // had the old root as either, this one's threads included.
  for (const std::string& path : carry) {
    if (!IsMountPoint(path)) continue;
    std::string target = absl::StrCat(kNewRoot, path);
    SBX_RETURN_IF_ERROR(MakeDir(target.c_str(), 0755));
    SBX_RETURN_IF_ERROR(Mount(path.c_str(), target.c_str(), nullptr, MS_MOVE));
  }
  if (chdir(kNewRoot) != 0) return ErrnoStatus("chdir", kNewRoot, errno);
  if (syscall(SYS_pivot_root, ".", ".") != 0) {
    return ErrnoStatus("pivot_root", kNewRoot, errno);
  }
  if (umount2(".", MNT_DETACH) != 0) {
    return ErrnoStatus("umount", "old root", errno);
  }
  if (chdir("/") != 0) return ErrnoStatus("chdir", "/", errno);
  return absl::OkStatus();
}

// /proc, /sys, /dev/pts, /dev/shm, /tmp and /run, where they are not
// mounted yet.
absl::Status MountStandard() {
  if (!IsMountPoint("/proc")) {
    SBX_RETURN_IF_ERROR(
        Mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC));
  }
  if (!IsMountPoint("/sys")) {
    SBX_RETURN_IF_ERROR(
        Mount("sysfs", "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC));
  }
  SBX_RETURN_IF_ERROR(MakeDir("/dev/pts", 0755));
  if (!IsMountPoint("/dev/pts")) {
    SBX_RETURN_IF_ERROR(Mount("devpts", "/dev/pts", "devpts",
                              MS_NOSUID | MS_NOEXEC,
                              "mode=0620,ptmxmode=0666"));
  }
  SBX_RETURN_IF_ERROR(MakeDir("/dev/shm", 01777));
  if (!IsMountPoint("/dev/shm")) {
    SBX_RETURN_IF_ERROR(Mount("shm", "/dev/shm", "tmpfs",
                              MS_NOSUID | MS_NODEV, "mode=1777"));
  }
  if (!IsMountPoint("/tmp")) {
    SBX_RETURN_IF_ERROR(
        Mount("tmp", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777"));
  }
  if (!IsMountPoint("/run")) {
    SBX_RETURN_IF_ERROR(
        Mount("run", "/run", "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755"));
  }
  return absl::OkStatus();
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
    if (key == "sbx.upper" && value == "late") {
      params.upper_device.clear();
      params.upper_late = true;
    } else if (key == "sbx.upper") {
      if (value.rfind("/dev/", 0) != 0 || value.find("..") != std::string::npos) {
        return absl::InvalidArgumentError("sbx.upper must name a /dev node: " +
                                          value);
      }
      params.upper_device = value;
      params.upper_late = false;
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

absl::StatusOr<ProgramResult> RunProgramAtBoot(
    const std::vector<std::string>& argv) {
  if (argv.empty()) return absl::InvalidArgumentError("no program to run");
  // Everything the child needs is prepared before the fork.
  std::vector<std::string> args = argv;
  std::vector<char*> ptrs;
  for (std::string& arg : args) ptrs.push_back(arg.data());
  ptrs.push_back(nullptr);
  char path_env[] = "PATH=/usr/sbin:/usr/bin:/sbin:/bin";
  char* envp[] = {path_env, nullptr};
  int pipe_fds[2];
  if (pipe2(pipe_fds, O_CLOEXEC) != 0) return ErrnoStatus("pipe2", errno);
  UniqueFd out_read(pipe_fds[0]);
  UniqueFd out_write(pipe_fds[1]);
  UniqueFd null_fd(open("/dev/null", O_RDONLY | O_CLOEXEC));
  if (!null_fd) return ErrnoStatus("open", "/dev/null", errno);
  pid_t pid = fork();
  if (pid < 0) return ErrnoStatus("fork", errno);
  if (pid == 0) {
    if (dup2(null_fd.get(), 0) < 0 || dup2(out_write.get(), 1) < 0 ||
        dup2(out_write.get(), 2) < 0) {
      _exit(127);
    }
    execve(ptrs[0], ptrs.data(), envp);
    _exit(127);
  }
  out_write.reset();
  ProgramResult result;
  char buffer[4096];
  while (true) {
    ssize_t n = read(out_read.get(), buffer, sizeof(buffer));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    result.output.append(buffer, static_cast<size_t>(n));
    if (result.output.size() > 2 * kMaxProgramOutput) {
      result.output.erase(0, result.output.size() - kMaxProgramOutput);
    }
  }
  if (result.output.size() > kMaxProgramOutput) {
    result.output.erase(0, result.output.size() - kMaxProgramOutput);
  }
  int status = 0;
  while (waitpid(pid, &status, 0) < 0) {
    if (errno != EINTR) return ErrnoStatus("waitpid", argv[0], errno);
  }
  result.signaled = WIFSIGNALED(status);
  result.code = result.signaled ? WTERMSIG(status) : WEXITSTATUS(status);
  return result;
}

absl::Status SetUpGuest(const GuestParams& params) {
  // The kernel mounted the root disk read-only and, with
  // CONFIG_DEVTMPFS_MOUNT, /dev.
  if (mount("devtmpfs", "/dev", "devtmpfs", 0, nullptr) != 0 &&
      errno != EBUSY) {
    return ErrnoStatus("mount devtmpfs", "/dev", errno);
  }
  if (params.upper_late) {
    // The read-only rootfs stays the root until AttachDisk; the standard
    // mounts go on it (their mount points exist in the image).
    SBX_LOG(INFO) << "sbx.upper=late: / is read-only until the host "
                     "attaches the writable disk";
  } else {
    SBX_RETURN_IF_ERROR(MountStage());
    if (params.upper_device.empty()) {
      SBX_LOG(WARNING) << "no writable disk (sbx.upper): changes to / live "
                          "in memory and are lost when the VM ends";
      SBX_RETURN_IF_ERROR(
          Mount("upper", kUpperMount, "tmpfs", 0, "mode=0755"));
    } else {
      SBX_RETURN_IF_ERROR(
          MountUpperDisk(params.upper_device, RunProgramAtBoot));
    }
    SBX_RETURN_IF_ERROR(PivotToOverlay({"/dev", "/proc"}));
  }
  SBX_RETURN_IF_ERROR(MountStandard());
  if (sethostname("sandbox", 7) != 0) {
    SBX_LOG(WARNING) << "sethostname: " << strerror(errno);
  }
  absl::Status lo = BringUpLoopback();
  if (!lo.ok()) SBX_LOG(WARNING) << "loopback: " << lo;
  return absl::OkStatus();
}

absl::Status CheckDiskDevice(const std::string& device) {
  if (device.size() != 8 || device.compare(0, 7, "/dev/vd") != 0 ||
      device[7] < 'a' || device[7] > 'z') {
    return absl::InvalidArgumentError(absl::StrCat(
        "the writable disk must be /dev/vd[a-z], not \"", device, "\""));
  }
  return absl::OkStatus();
}

absl::Status AttachUpperDisk(const std::string& device,
                             const ProgramRunner& run) {
  SBX_RETURN_IF_ERROR(CheckDiskDevice(device));
  SBX_RETURN_IF_ERROR(MountStage());
  SBX_RETURN_IF_ERROR(MountUpperDisk(device, run));
  SBX_RETURN_IF_ERROR(
      PivotToOverlay({"/dev", "/proc", "/sys", "/tmp", "/run"}));
  SBX_LOG(INFO) << device << " attached: / is the overlay of the rootfs and "
                << device;
  return absl::OkStatus();
}

}  // namespace sbx::agent
