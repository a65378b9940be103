#include "sandboxd/store.h"

#include <fcntl.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <filesystem>
#include <system_error>

#include "absl/strings/str_cat.h"
#include "base/logging.h"
#include "base/status.h"
#include "base/status_macros.h"
#include "base/unique_fd.h"

namespace sbx::sandboxd {
namespace {

constexpr char kSandboxRecord[] = "sandbox.pb";
constexpr char kTemplateRecord[] = "template.pb";

bool IsLowerHex(char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); }

absl::Status MakeDir(const std::string& path) {
  if (::mkdir(path.c_str(), 0700) != 0 && errno != EEXIST) {
    return ErrnoStatus("mkdir", path, errno);
  }
  return absl::OkStatus();
}

absl::Status FsyncDir(const std::string& dir) {
  UniqueFd fd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!fd.valid()) return ErrnoStatus("open", dir, errno);
  if (::fsync(fd.get()) != 0) return ErrnoStatus("fsync", dir, errno);
  return absl::OkStatus();
}

absl::StatusOr<std::string> ReadWholeFile(const std::string& path) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) return ErrnoStatus("open", path, errno);
  std::string data;
  char buffer[16384];
  for (;;) {
    ssize_t n = ::read(fd.get(), buffer, sizeof(buffer));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return ErrnoStatus("read", path, errno);
    if (n == 0) break;
    data.append(buffer, static_cast<size_t>(n));
    // A record is small; anything this big was not written by us.
    if (data.size() > (1u << 20)) {
      return absl::DataLossError(absl::StrCat(path, ": larger than 1 MiB"));
    }
  }
  return data;
}

template <typename Record>
std::vector<Record> LoadRecords(const std::string& dir, const char* file,
                                absl::Status (*validate)(std::string_view)) {
  std::vector<Record> records;
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(dir, ec)) {
    const std::string name = entry.path().filename().string();
    if (!validate(name).ok()) {
      // Temporary directories of builds in progress, or debris.
      if (name.find(".build-") == std::string::npos) {
        SBX_LOG(WARNING) << "state dir: ignoring " << entry.path().string();
      }
      continue;
    }
    const std::string path = absl::StrCat(entry.path().string(), "/", file);
    absl::StatusOr<std::string> data = ReadWholeFile(path);
    Record record;
    if (!data.ok() || !record.ParseFromString(*data)) {
      SBX_LOG(WARNING) << "state dir: skipping " << entry.path().string() << ": "
                       << (data.ok() ? "unreadable record" : data.status().ToString());
      continue;
    }
    records.push_back(std::move(record));
  }
  if (ec) SBX_LOG(WARNING) << "state dir: listing " << dir << ": " << ec.message();
  return records;
}

absl::Status RemoveTree(const std::string& path) {
  std::error_code ec;
  std::filesystem::remove_all(path, ec);
  if (ec) return absl::InternalError(absl::StrCat("removing ", path, ": ", ec.message()));
  return absl::OkStatus();
}

}  // namespace

absl::Status ValidateSandboxId(std::string_view id) {
  bool ok = id.size() == 19 && id.substr(0, 3) == "sb-";
  for (size_t i = 3; ok && i < id.size(); ++i) ok = IsLowerHex(id[i]);
  if (!ok) {
    return absl::InvalidArgumentError(absl::StrCat(
        "bad sandbox id \"", std::string(id.substr(0, 64)),
        "\": ids look like sb-0123456789abcdef"));
  }
  return absl::OkStatus();
}

absl::Status ValidateTemplateName(std::string_view name) {
  bool ok = !name.empty() && name.size() <= 63 &&
            ((name[0] >= 'a' && name[0] <= 'z') || (name[0] >= '0' && name[0] <= '9'));
  for (char c : name) {
    ok = ok && ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_');
  }
  if (!ok) {
    return absl::InvalidArgumentError(absl::StrCat(
        "bad template name \"", std::string(name.substr(0, 64)),
        "\": 1 to 63 of a-z, 0-9, '-' and '_', starting with a letter or digit"));
  }
  return absl::OkStatus();
}

std::string NewSandboxId() {
  uint8_t bytes[8];
  size_t got = 0;
  while (got < sizeof(bytes)) {
    ssize_t n = ::getrandom(bytes + got, sizeof(bytes) - got, 0);
    SBX_CHECK(n > 0 || errno == EINTR);
    if (n > 0) got += static_cast<size_t>(n);
  }
  static constexpr char kHex[] = "0123456789abcdef";
  std::string id = "sb-";
  for (uint8_t b : bytes) {
    id += kHex[b >> 4];
    id += kHex[b & 15];
  }
  return id;
}

absl::Status WriteFileAtomic(const std::string& path, std::string_view data) {
  const std::string tmp = absl::StrCat(path, ".tmp");
  {
    UniqueFd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
    if (!fd.valid()) return ErrnoStatus("open", tmp, errno);
    size_t done = 0;
    while (done < data.size()) {
      ssize_t n = ::write(fd.get(), data.data() + done, data.size() - done);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) return ErrnoStatus("write", tmp, errno);
      done += static_cast<size_t>(n);
    }
    if (::fsync(fd.get()) != 0) return ErrnoStatus("fsync", tmp, errno);
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) return ErrnoStatus("rename", tmp, errno);
  return FsyncDir(std::filesystem::path(path).parent_path().string());
}

absl::StatusOr<Store> Store::Open(std::string dir) {
  if (dir.empty()) return absl::InvalidArgumentError("empty state directory");
  while (dir.size() > 1 && dir.back() == '/') dir.pop_back();
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot create state directory ", dir, ": ", ec.message()));
  }
  SBX_RETURN_IF_ERROR(MakeDir(dir + "/templates"));
  SBX_RETURN_IF_ERROR(MakeDir(dir + "/sandboxes"));
  return Store(std::move(dir));
}

std::string Store::SandboxDir(std::string_view id) const {
  SBX_CHECK(ValidateSandboxId(id).ok());
  return absl::StrCat(dir_, "/sandboxes/", std::string(id));
}

std::string Store::TemplateDir(std::string_view name) const {
  SBX_CHECK(ValidateTemplateName(name).ok());
  return absl::StrCat(dir_, "/templates/", std::string(name));
}

absl::Status Store::SaveSandbox(const sandboxd::v1::SandboxRecord& record) {
  SBX_RETURN_IF_ERROR(ValidateSandboxId(record.sandbox().id()));
  const std::string dir = SandboxDir(record.sandbox().id());
  SBX_RETURN_IF_ERROR(MakeDir(dir));
  return WriteFileAtomic(absl::StrCat(dir, "/", kSandboxRecord),
                         record.SerializeAsString());
}

absl::Status Store::SaveTemplate(const sandboxd::v1::TemplateRecord& record) {
  SBX_RETURN_IF_ERROR(ValidateTemplateName(record.template_().name()));
  const std::string dir = TemplateDir(record.template_().name());
  SBX_RETURN_IF_ERROR(MakeDir(dir));
  return WriteFileAtomic(absl::StrCat(dir, "/", kTemplateRecord),
                         record.SerializeAsString());
}

std::vector<sandboxd::v1::SandboxRecord> Store::LoadSandboxes() const {
  return LoadRecords<sandboxd::v1::SandboxRecord>(dir_ + "/sandboxes", kSandboxRecord,
                                                  &ValidateSandboxId);
}

std::vector<sandboxd::v1::TemplateRecord> Store::LoadTemplates() const {
  return LoadRecords<sandboxd::v1::TemplateRecord>(dir_ + "/templates", kTemplateRecord,
                                                   &ValidateTemplateName);
}

absl::Status Store::RemoveSandbox(std::string_view id) {
  SBX_RETURN_IF_ERROR(ValidateSandboxId(id));
  return RemoveTree(SandboxDir(id));
}

absl::Status Store::RemoveTemplate(std::string_view name) {
  SBX_RETURN_IF_ERROR(ValidateTemplateName(name));
  return RemoveTree(TemplateDir(name));
}

}  // namespace sbx::sandboxd
