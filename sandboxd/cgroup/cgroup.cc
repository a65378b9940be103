#include "sandboxd/cgroup/cgroup.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <set>
#include <sstream>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "base/status.h"
#include "base/status_macros.h"
#include "base/unique_fd.h"

namespace sbx::sandboxd {
namespace {

constexpr long kCgroup2Magic = 0x63677270;  // CGROUP2_SUPER_MAGIC
constexpr uint64_t kCpuPeriodUs = 100'000;

bool IsDir(const std::string& path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

absl::StatusOr<std::string> ReadFile(const std::string& path) {
  UniqueFd fd(open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) return ErrnoStatus("open", path, errno);
  std::string data;
  char buffer[4096];
  while (true) {
    ssize_t n = read(fd.get(), buffer, sizeof(buffer));
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoStatus("read", path, errno);
    }
    if (n == 0) return data;
    data.append(buffer, static_cast<size_t>(n));
  }
}

// cgroup control files take one value per write(2).
absl::Status WriteFile(const std::string& path, std::string_view value) {
  UniqueFd fd(open(path.c_str(), O_WRONLY | O_CLOEXEC));
  if (!fd) return ErrnoStatus("open", path, errno);
  ssize_t n;
  do {
    n = write(fd.get(), value.data(), value.size());
  } while (n < 0 && errno == EINTR);
  if (n < 0) {
    return ErrnoStatus(absl::StrCat("write \"", std::string(value), "\" to"), path, errno);
  }
  return absl::OkStatus();
}

absl::Status MakeDir(const std::string& path) {
  if (mkdir(path.c_str(), 0755) != 0 && errno != EEXIST) {
    return ErrnoStatus("mkdir", path, errno);
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<pid_t>> ReadPids(const std::string& dir) {
  SBX_ASSIGN_OR_RETURN(std::string text, ReadFile(dir + "/cgroup.procs"));
  std::vector<pid_t> pids;
  for (absl::string_view line :
       absl::StrSplit(text, '\n', absl::SkipWhitespace())) {
    int pid;
    if (absl::SimpleAtoi(line, &pid)) pids.push_back(pid);
  }
  return pids;
}

}  // namespace

absl::StatusOr<CgroupRoot> CgroupRoot::Open(std::string mount,
                                             std::string parent) {
  SBX_RETURN_IF_ERROR(Cgroup::ValidateName(parent));
  struct statfs fs;
  if (statfs(mount.c_str(), &fs) != 0) {
    return ErrnoStatus("statfs", mount, errno);
  }
  if (fs.f_type == kCgroup2Magic) {
    // v2: the controllers must be available at the root, and enabled for
    // the parent's children.
    SBX_ASSIGN_OR_RETURN(std::string available,
                         ReadFile(mount + "/cgroup.controllers"));
    std::set<std::string> have = absl::StrSplit(
        absl::StripAsciiWhitespace(available), ' ', absl::SkipEmpty());
    for (const char* controller : {"cpu", "memory", "pids"}) {
      if (!have.count(controller)) {
        return absl::FailedPreconditionError(absl::StrCat(
            "cgroup v2 at ", mount, " lacks the ", controller,
            " controller (", available, ")"));
      }
    }
    std::string dir = mount + "/" + parent;
    SBX_RETURN_IF_ERROR(WriteFile(mount + "/cgroup.subtree_control",
                                  "+cpu +memory +pids"));
    SBX_RETURN_IF_ERROR(MakeDir(dir));
    SBX_RETURN_IF_ERROR(
        WriteFile(dir + "/cgroup.subtree_control", "+cpu +memory +pids"));
    return CgroupRoot(Version::kV2, mount, {dir});
  }
  // v1: a hierarchy per controller (cpu may be mounted as cpu,cpuacct).
  std::vector<std::string> dirs;
  for (const char* controller : {"cpu", "memory", "pids"}) {
    std::string hierarchy = mount + "/" + controller;
    if (!IsDir(hierarchy)) {
      return absl::FailedPreconditionError(absl::StrCat(
          "no cgroup v2 at ", mount, " and no v1 ", controller,
          " hierarchy at ", hierarchy));
    }
    std::string dir = hierarchy + "/" + parent;
    SBX_RETURN_IF_ERROR(MakeDir(dir));
    dirs.push_back(dir);
  }
  return CgroupRoot(Version::kV1, mount, std::move(dirs));
}

absl::Status Cgroup::ValidateName(std::string_view name) {
  if (name.empty() || name.size() > 64) {
    return absl::InvalidArgumentError(
        absl::StrCat("cgroup name must be 1 to 64 characters: \"", std::string(name), "\""));
  }
  for (char c : name) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
              c == '_';
    if (!ok) {
      return absl::InvalidArgumentError(absl::StrCat(
          "cgroup name may hold only a-z, 0-9, - and _: \"", std::string(name), "\""));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<Cgroup>> Cgroup::Create(
    const CgroupRoot& root, std::string_view name, const CgroupLimits& limits) {
  SBX_RETURN_IF_ERROR(ValidateName(name));
  std::vector<std::string> dirs;
  for (const std::string& parent : root.parent_dirs()) {
    std::string dir = absl::StrCat(parent, "/", std::string(name));
    if (mkdir(dir.c_str(), 0755) != 0) {
      int err = errno;
      // Undo the part made so far.
      for (const std::string& made : dirs) rmdir(made.c_str());
      if (err == EEXIST) {
        return absl::AlreadyExistsError(absl::StrCat("cgroup ", dir, " exists"));
      }
      return ErrnoStatus("mkdir", dir, err);
    }
    dirs.push_back(dir);
  }
  std::unique_ptr<Cgroup> group(new Cgroup(root.version(), std::move(dirs)));
  absl::Status applied = group->Apply(limits);
  if (!applied.ok()) {
    (void)group->Remove();
    return applied;
  }
  return group;
}

absl::StatusOr<std::unique_ptr<Cgroup>> Cgroup::Adopt(const CgroupRoot& root,
                                                      std::string_view name) {
  SBX_RETURN_IF_ERROR(ValidateName(name));
  std::vector<std::string> dirs;
  for (const std::string& parent : root.parent_dirs()) {
    std::string dir = absl::StrCat(parent, "/", std::string(name));
    if (!IsDir(dir)) return absl::NotFoundError(absl::StrCat("no cgroup ", dir));
    dirs.push_back(dir);
  }
  return std::unique_ptr<Cgroup>(new Cgroup(root.version(), std::move(dirs)));
}

Cgroup::~Cgroup() { (void)Remove(); }

absl::Status Cgroup::Apply(const CgroupLimits& limits) {
  if (version_ == CgroupRoot::Version::kV2) {
    const std::string& dir = dirs_[0];
    if (limits.cpu_millis > 0) {
      uint64_t quota = uint64_t{limits.cpu_millis} * kCpuPeriodUs / 1000;
      SBX_RETURN_IF_ERROR(WriteFile(dir + "/cpu.max",
                                    absl::StrCat(quota, " ", kCpuPeriodUs)));
    }
    if (limits.memory_bytes > 0) {
      SBX_RETURN_IF_ERROR(
          WriteFile(dir + "/memory.max", absl::StrCat(limits.memory_bytes)));
      // No swap: the limit is the limit.
      (void)WriteFile(dir + "/memory.swap.max", "0");
    }
    if (limits.pids_max > 0) {
      SBX_RETURN_IF_ERROR(
          WriteFile(dir + "/pids.max", absl::StrCat(limits.pids_max)));
    }
    return absl::OkStatus();
  }
  const std::string& cpu = dirs_[0];
  const std::string& memory = dirs_[1];
  const std::string& pids = dirs_[2];
  if (limits.cpu_millis > 0) {
    uint64_t quota = uint64_t{limits.cpu_millis} * kCpuPeriodUs / 1000;
    SBX_RETURN_IF_ERROR(
        WriteFile(cpu + "/cpu.cfs_period_us", absl::StrCat(kCpuPeriodUs)));
    SBX_RETURN_IF_ERROR(
        WriteFile(cpu + "/cpu.cfs_quota_us", absl::StrCat(quota)));
  }
  if (limits.memory_bytes > 0) {
    SBX_RETURN_IF_ERROR(WriteFile(memory + "/memory.limit_in_bytes",
                                  absl::StrCat(limits.memory_bytes)));
    // Where swap accounting exists, no swap beyond the limit either.
    std::string memsw = memory + "/memory.memsw.limit_in_bytes";
    if (access(memsw.c_str(), F_OK) == 0) {
      (void)WriteFile(memsw, absl::StrCat(limits.memory_bytes));
    }
  }
  if (limits.pids_max > 0) {
    SBX_RETURN_IF_ERROR(
        WriteFile(pids + "/pids.max", absl::StrCat(limits.pids_max)));
  }
  return absl::OkStatus();
}

absl::Status Cgroup::AddProcess(pid_t pid) {
  if (removed_) return absl::FailedPreconditionError("cgroup was removed");
  for (const std::string& dir : dirs_) {
    SBX_RETURN_IF_ERROR(WriteFile(dir + "/cgroup.procs", absl::StrCat(pid)));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<pid_t>> Cgroup::Processes() const {
  std::set<pid_t> all;
  for (const std::string& dir : dirs_) {
    if (!IsDir(dir)) continue;  // removed (by another handle): empty
    SBX_ASSIGN_OR_RETURN(std::vector<pid_t> pids, ReadPids(dir));
    all.insert(pids.begin(), pids.end());
  }
  return std::vector<pid_t>(all.begin(), all.end());
}

absl::StatusOr<uint64_t> Cgroup::MemoryUsage() const {
  std::string path = version_ == CgroupRoot::Version::kV2
                         ? dirs_[0] + "/memory.current"
                         : dirs_[1] + "/memory.usage_in_bytes";
  SBX_ASSIGN_OR_RETURN(std::string text, ReadFile(path));
  uint64_t bytes;
  if (!absl::SimpleAtoi(absl::StripAsciiWhitespace(text), &bytes)) {
    return absl::InternalError(absl::StrCat("unexpected ", path, ": ", text));
  }
  return bytes;
}

absl::Status Cgroup::Remove() {
  if (removed_) return absl::OkStatus();
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while (true) {
    SBX_ASSIGN_OR_RETURN(std::vector<pid_t> pids, Processes());
    if (pids.empty()) break;
    for (pid_t pid : pids) kill(pid, SIGKILL);
    if (std::chrono::steady_clock::now() > deadline) {
      return absl::DeadlineExceededError(absl::StrCat(
          "cgroup ", dirs_[0], " still has ", pids.size(),
          " processes 5 s after SIGKILL"));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  for (const std::string& dir : dirs_) {
    // A process that just died may still be leaving: retry briefly.
    int tries = 0;
    while (rmdir(dir.c_str()) != 0 && errno != ENOENT) {
      if (errno != EBUSY || ++tries > 100) return ErrnoStatus("rmdir", dir, errno);
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
  }
  removed_ = true;
  return absl::OkStatus();
}

}  // namespace sbx::sandboxd
