#include "sandboxd/vmm_jail.h"

#include <dirent.h>
#include <elf.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <fstream>
#include <utility>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "base/status.h"
#include "base/status_macros.h"

namespace sbx::sandboxd {

absl::Status CheckUidRangeIsFree(const VmmJailOptions& range, const std::string& passwd,
                                 const std::string& group) {
  const uint64_t first = range.first_uid;
  const uint64_t end = first + range.uid_count;
  for (const auto& [path, what] : {std::pair{passwd, "user"}, std::pair{group, "group"}}) {
    std::ifstream in(path);
    for (std::string line; std::getline(in, line);) {
      // name:password:ID:...
      std::vector<std::string> fields = absl::StrSplit(line, ':');
      uint64_t id = 0;
      if (fields.size() < 3 || !absl::SimpleAtoi(fields[2], &id)) continue;
      if (id >= first && id < end) {
        return absl::FailedPreconditionError(absl::StrCat(
            "the VMMs' id range ", first, " to ", end - 1, " holds ", what, " ", fields[0],
            " (", id, ", ", path, "): a jailed VMM would own its files; choose another "
            "range with --jail-uids FIRST:COUNT"));
      }
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<uid_t> UidPool::Allocate() {
  absl::MutexLock lock(&mu_);
  for (uint32_t i = 0; i < count_; ++i) {
    const uid_t uid = first_ + i;
    if (used_.insert(uid).second) return uid;
  }
  return absl::ResourceExhaustedError(absl::StrCat(
      "all ", count_, " VMM ids (", first_, " to ", first_ + count_ - 1,
      ") are in use: raise --jail-uids"));
}

bool UidPool::MarkUsed(uid_t uid) {
  if (!Contains(uid)) return false;
  absl::MutexLock lock(&mu_);
  used_.insert(uid);
  return true;
}

void UidPool::Release(uid_t uid) {
  absl::MutexLock lock(&mu_);
  used_.erase(uid);
}

absl::Status CheckStaticExecutable(const std::string& path) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) return ErrnoStatus("open", path, errno);
  Elf64_Ehdr header;
  if (::pread(fd.get(), &header, sizeof(header), 0) != static_cast<ssize_t>(sizeof(header)) ||
      memcmp(header.e_ident, ELFMAG, SELFMAG) != 0 || header.e_ident[EI_CLASS] != ELFCLASS64 ||
      header.e_phentsize != sizeof(Elf64_Phdr)) {
    return absl::FailedPreconditionError(absl::StrCat(path, " is not a 64-bit ELF executable"));
  }
  for (uint16_t i = 0; i < header.e_phnum; ++i) {
    Elf64_Phdr ph;
    const off_t at = static_cast<off_t>(header.e_phoff + uint64_t{i} * sizeof(ph));
    if (::pread(fd.get(), &ph, sizeof(ph), at) != static_cast<ssize_t>(sizeof(ph))) {
      return absl::FailedPreconditionError(absl::StrCat(path, ": truncated program headers"));
    }
    if (ph.p_type == PT_INTERP) {
      return absl::FailedPreconditionError(absl::StrCat(
          path, " is dynamically linked; the jail holds the sbx-vmm binary and nothing "
                "else: use a static build (the default; a sanitized build is dynamic) or "
                "run sandboxd --no-jail (unsafe)"));
    }
  }
  return absl::OkStatus();
}

namespace {

absl::Status ChownAt(int dir_fd, const char* name, const std::string& path, uid_t uid,
                     gid_t gid, int depth) {
  if (depth > 64) return absl::FailedPreconditionError(absl::StrCat(path, ": nested too deep"));
  if (::fchownat(dir_fd, name, uid, gid, AT_SYMLINK_NOFOLLOW) != 0) {
    return ErrnoStatus("lchown", path, errno);
  }
  struct stat st;
  if (::fstatat(dir_fd, name, &st, AT_SYMLINK_NOFOLLOW) != 0) {
    return ErrnoStatus("stat", path, errno);
  }
  if (!S_ISDIR(st.st_mode)) return absl::OkStatus();
  UniqueFd fd(::openat(dir_fd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
  if (!fd.valid()) return ErrnoStatus("open", path, errno);
  DIR* d = ::fdopendir(::dup(fd.get()));
  if (d == nullptr) return ErrnoStatus("opendir", path, errno);
  std::vector<std::string> names;
  while (struct dirent* e = ::readdir(d)) {
    if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0) names.emplace_back(e->d_name);
  }
  ::closedir(d);
  for (const std::string& n : names) {
    SBX_RETURN_IF_ERROR(
        ChownAt(fd.get(), n.c_str(), absl::StrCat(path, "/", n), uid, gid, depth + 1));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status ChownTree(const std::string& path, uid_t uid, gid_t gid) {
  return ChownAt(AT_FDCWD, path.c_str(), path, uid, gid, 0);
}

absl::StatusOr<uid_t> ProcessUid(pid_t pid) {
  const std::string path = absl::StrCat("/proc/", pid, "/status");
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) {
    if (errno == ENOENT || errno == ESRCH) {
      return absl::NotFoundError(absl::StrCat("process ", pid, " is gone"));
    }
    return ErrnoStatus("open", path, errno);
  }
  std::string text(8192, '\0');
  ssize_t n;
  do {
    n = ::read(fd.get(), text.data(), text.size());
  } while (n < 0 && errno == EINTR);
  if (n < 0) return ErrnoStatus("read", path, errno);
  text.resize(static_cast<size_t>(n));
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    if (!absl::ConsumePrefix(&line, "Uid:")) continue;
    std::vector<absl::string_view> ids = absl::StrSplit(line, '\t', absl::SkipEmpty());
    uint32_t uid = 0;
    if (!ids.empty() && absl::SimpleAtoi(ids[0], &uid)) return static_cast<uid_t>(uid);
  }
  return absl::InternalError(absl::StrCat(path, " has no Uid line"));
}

absl::StatusOr<std::string> PinnedSocket::Path() {
  absl::MutexLock lock(&mu_);
  if (!fd_.valid()) {
    UniqueFd fd(::open(path_.c_str(), O_PATH | O_NOFOLLOW | O_CLOEXEC));
    if (!fd.valid()) {
      if (errno == ENOENT) return absl::UnavailableError(absl::StrCat("no socket at ", path_, " yet"));
      return ErrnoStatus("open", path_, errno);
    }
    struct stat st;
    if (::fstat(fd.get(), &st) != 0) return ErrnoStatus("stat", path_, errno);
    if (!S_ISSOCK(st.st_mode)) {
      return absl::PermissionDeniedError(absl::StrCat(
          path_, " is not a socket", S_ISLNK(st.st_mode) ? " (a symlink): refusing it" : ""));
    }
    if (owner_.has_value() && st.st_uid != *owner_) {
      return absl::PermissionDeniedError(absl::StrCat(path_, " belongs to uid ", st.st_uid,
                                                      ", not to the VMM's ", *owner_));
    }
    fd_ = std::move(fd);
  }
  return absl::StrCat("/proc/self/fd/", fd_.get());
}

}  // namespace sbx::sandboxd
