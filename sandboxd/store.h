#ifndef SBX_SANDBOXD_STORE_H_
#define SBX_SANDBOXD_STORE_H_

#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "sbx/sandboxd/v1/state.pb.h"

// sandboxd's state directory:
//
//   DIR/templates/NAME/template.pb   TemplateRecord
//   DIR/templates/NAME/snapshot/     the template's full snapshot
//   DIR/sandboxes/ID/sandbox.pb      SandboxRecord
//   DIR/sandboxes/ID/disk.img        the sandbox's writable disk
//   DIR/sandboxes/ID/snapshot/       its last sleep (diff snapshot)
//   DIR/sandboxes/ID/vm/             the VMM's own (sockets, console; vm_process.h)
//   DIR/sandboxes/ID/vmm.log, jail/  its stderr; a jailed VMM's root
//
// Every record is replaced atomically (written beside, fsynced, renamed,
// the directory fsynced): a crash leaves the old record or the new one,
// never a torn one. Ids and names are validated before they become paths,
// so no request can reach outside DIR.

namespace sbx::sandboxd {

// "sb-" + 16 lowercase hex digits.
absl::Status ValidateSandboxId(std::string_view id);
// [a-z0-9][a-z0-9_-]{0,62}.
absl::Status ValidateTemplateName(std::string_view name);
// A fresh random sandbox id.
std::string NewSandboxId();

// Writes `data` to `path` atomically (see above).
absl::Status WriteFileAtomic(const std::string& path, std::string_view data);

class Store {
 public:
  // Creates DIR, DIR/templates and DIR/sandboxes (mode 0700) if missing.
  static absl::StatusOr<Store> Open(std::string dir);

  const std::string& dir() const { return dir_; }
  // REQUIRES: a valid id / name.
  std::string SandboxDir(std::string_view id) const;
  std::string TemplateDir(std::string_view name) const;

  absl::Status SaveSandbox(const sandboxd::v1::SandboxRecord& record);
  absl::Status SaveTemplate(const sandboxd::v1::TemplateRecord& record);

  // Every readable record. A directory with a missing or corrupt record
  // is skipped with a warning (and left for a person to look at), never a
  // reason not to start.
  std::vector<sandboxd::v1::SandboxRecord> LoadSandboxes() const;
  std::vector<sandboxd::v1::TemplateRecord> LoadTemplates() const;

  // Removes the sandbox's / template's directory and all it holds.
  absl::Status RemoveSandbox(std::string_view id);
  absl::Status RemoveTemplate(std::string_view name);

 private:
  explicit Store(std::string dir) : dir_(std::move(dir)) {}
  std::string dir_;
};

}  // namespace sbx::sandboxd

#endif  // SBX_SANDBOXD_STORE_H_
