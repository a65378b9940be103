#ifndef SBX_VMM_TEMPLATE_H_
#define SBX_VMM_TEMPLATE_H_

#include <cstdint>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "vmm/machine.h"

namespace sbx::vmm {

// sbx-vmm --snapshot-when-ready DIR: how a template is made.
struct TemplateOptions {
  std::string dir;  // where the full snapshot goes
  // The guest agent's vsock port (guest/: 1024).
  uint32_t agent_port = 1024;
  // How long the agent may take to answer its first Ping, from Run().
  uint64_t ready_timeout_ms = 300'000;
  // Then also record the snapshot's working set over this window
  // (Machine::RecordWorkingSet); unset: no working set.
  std::optional<uint64_t> working_set_ms;
};

struct TemplateResult {
  double ready_seconds = 0;  // Run() -> the agent's first answer
  SnapshotResult snapshot;
  std::optional<WorkingSetResult> working_set;
};

// Runs `machine` (booted, not run yet, with a vsock device) until the agent
// answers a Ping over vsock, asks it to Sync (the guest's disks are then
// consistent with the snapshot), pauses the VM, takes a full snapshot into
// options.dir and stops the VM; with options.working_set_ms, then records
// the snapshot's working set (restoring it once, `restore` says where its
// files go: the vsock socket is the booted VM's unless moved). Errors:
// kDeadlineExceeded if the agent did not answer in time (the VM is
// stopped), kAborted if the VM ended before (with how), kInvalidArgument
// without a vsock device; Sync, Pause and Snapshot errors as they come.
absl::StatusOr<TemplateResult> MakeTemplate(std::unique_ptr<Machine> machine,
                                            const TemplateOptions& options,
                                            const RestoreOptions& restore = {});

}  // namespace sbx::vmm

#endif  // SBX_VMM_TEMPLATE_H_
