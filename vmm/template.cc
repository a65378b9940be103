#include "vmm/template.h"

#include <chrono>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "base/logging.h"
#include "base/status.h"
#include "base/status_macros.h"
#include "guest/client.h"

namespace sbx::vmm {

namespace {

// Runs `machine` until its agent answers, Syncs, pauses and snapshots it;
// stops it and joins its thread on every path.
absl::Status SnapshotWhenReady(Machine& machine, const TemplateOptions& options,
                               TemplateResult& result) {
  const std::string uds = machine.config().vsock->uds_path;
  MachineExit exit;
  absl::Notification ended;
  std::thread runner([&] {
    exit = machine.Run();
    ended.Notify();
  });
  struct Joiner {
    Machine& m;
    std::thread& t;
    ~Joiner() {
      m.Stop();
      t.join();
    }
  } joiner{machine, runner};

  agent::Client client(agent::NewVsockDialer(uds, options.agent_port));
  const absl::Time start = absl::Now();
  const absl::Time deadline =
      start + absl::Milliseconds(static_cast<int64_t>(options.ready_timeout_ms));
  absl::Status last = absl::UnavailableError("no answer yet");
  for (;;) {
    if (ended.HasBeenNotified()) {
      return absl::AbortedError(absl::StrCat(
          "the VM ended before the agent answered: ", exit.description));
    }
    absl::StatusOr<agent::Pong> pong = client.Ping();
    if (pong.ok()) break;
    last = pong.status();
    if (absl::Now() >= deadline) {
      return absl::DeadlineExceededError(absl::StrCat(
          "the agent did not answer on vsock port ", options.agent_port,
          " within ", options.ready_timeout_ms, " ms (last: ", last.message(),
          ")"));
    }
    // The guest boots; the agent listens only once it is up.
    ended.WaitForNotificationWithTimeout(absl::Milliseconds(100));
  }
  result.ready_seconds = absl::ToDoubleSeconds(absl::Now() - start);
  SBX_LOG(INFO) << "agent answered after " << result.ready_seconds << " s";
  // Disk writes the guest holds in its page cache reach the disk files
  // before the snapshot: a clone's disk copy matches its memory.
  if (absl::Status s = client.Sync(); !s.ok()) {
    return Annotate(s, "asking the agent to Sync");
  }
  if (absl::Status s = machine.Pause(); !s.ok()) {
    return Annotate(s, "pausing for the snapshot");
  }
  absl::StatusOr<SnapshotResult> snap =
      machine.TakeSnapshot(options.dir, SnapshotKind::kFull);
  if (!snap.ok()) return snap.status();
  result.snapshot = *snap;
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<TemplateResult> MakeTemplate(std::unique_ptr<Machine> machine,
                                            const TemplateOptions& options,
                                            const RestoreOptions& restore) {
  if (!machine->config().vsock.has_value()) {
    return absl::InvalidArgumentError(
        "--snapshot-when-ready needs --vsock: the agent answers over it");
  }
  if (options.dir.empty()) {
    return absl::InvalidArgumentError("--snapshot-when-ready needs a directory");
  }
  TemplateResult result;
  SBX_RETURN_IF_ERROR(SnapshotWhenReady(*machine, options, result));
  // The booted VM's files (its vsock socket) go before a restore reuses them.
  machine.reset();
  if (options.working_set_ms.has_value()) {
    absl::StatusOr<WorkingSetResult> ws =
        Machine::RecordWorkingSet(options.dir, *options.working_set_ms, restore);
    if (!ws.ok()) return Annotate(ws.status(), "recording the working set");
    result.working_set = *ws;
  }
  return result;
}

}  // namespace sbx::vmm
