// sbx-vmm: boots one Linux guest in a KVM VM. See Usage() in config.cc.
#include <cstdio>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "base/logging.h"
#include "vmm/config.h"
#include "vmm/control_server.h"
#include "vmm/machine.h"
#include "vmm/template.h"

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  if (!args.empty() && (args[0] == "--help" || args[0] == "-h")) {
    std::fputs(sbx::vmm::Usage().c_str(), stdout);
    return 0;
  }
  absl::StatusOr<sbx::vmm::MachineConfig> config = sbx::vmm::ParseArgs(args);
  if (!config.ok()) {
    std::fprintf(stderr, "sbx-vmm: %s (see sbx-vmm --help)\n",
                 std::string(config.status().message()).c_str());
    return 2;
  }
  switch (config->seccomp.mode) {
    case sbx::vmm::seccomp::Mode::kKill:
      break;
    case sbx::vmm::seccomp::Mode::kLog:
      std::fprintf(stderr,
                   "sbx-vmm: --seccomp=log: system calls outside a thread's "
                   "allowlist are ALLOWED and only logged by the kernel "
                   "(dmesg, audit type=1326); for development only\n");
      break;
    case sbx::vmm::seccomp::Mode::kOff:
      std::fprintf(stderr,
                   "sbx-vmm: WARNING: --seccomp=off: UNSAFE, the VMM runs "
                   "without system call filters; a guest that breaks device "
                   "emulation gets every system call of this process. For "
                   "debugging only.\n");
      break;
  }
  absl::StatusOr<std::unique_ptr<sbx::vmm::Machine>> machine;
  if (config->restore_dir.empty()) {
    machine = sbx::vmm::Machine::Create(*config);
  } else {
    // The snapshot fixes the VM; the flags given with --restore move its
    // files (ParseArgs refused the others).
    sbx::vmm::RestoreOptions options;
    for (const sbx::vmm::DiskConfig& disk : config->disks) {
      options.disk_paths.push_back(disk.path);
    }
    if (config->vsock.has_value()) options.vsock_path = config->vsock->uds_path;
    if (!config->console.empty()) options.console = config->console;
    options.console_max_bytes = config->console_max_bytes;
    if (!config->prefetch) options.prefetch = sbx::vmm::RestoreOptions::Prefetch::kOff;
    options.seccomp = config->seccomp;
    if (config->record_working_set_ms.has_value()) {
      absl::StatusOr<sbx::vmm::WorkingSetResult> recorded =
          sbx::vmm::Machine::RecordWorkingSet(
              config->restore_dir, *config->record_working_set_ms, options);
      if (!recorded.ok()) {
        std::fprintf(stderr, "sbx-vmm: %s\n",
                     std::string(recorded.status().message()).c_str());
        const absl::StatusCode code = recorded.status().code();
        return code == absl::StatusCode::kInvalidArgument ||
                       code == absl::StatusCode::kNotFound ||
                       code == absl::StatusCode::kDataLoss ||
                       code == absl::StatusCode::kFailedPrecondition
                   ? 2
                   : 1;
      }
      std::fprintf(stderr,
                   "sbx-vmm: working set of %s: %llu pages read, %llu written, "
                   "%llu ranges\n",
                   config->restore_dir.c_str(),
                   static_cast<unsigned long long>(recorded->read_pages),
                   static_cast<unsigned long long>(recorded->written_pages),
                   static_cast<unsigned long long>(recorded->ranges));
      return 0;
    }
    machine = sbx::vmm::Machine::Restore(config->restore_dir, options);
  }
  if (!machine.ok()) {
    std::fprintf(stderr, "sbx-vmm: %s\n",
                 std::string(machine.status().message()).c_str());
    // Bad input: flags, and for --restore a snapshot that is missing,
    // corrupt or incompatible.
    const absl::StatusCode code = machine.status().code();
    const bool bad_input =
        code == absl::StatusCode::kInvalidArgument ||
        (!config->restore_dir.empty() &&
         (code == absl::StatusCode::kNotFound ||
          code == absl::StatusCode::kDataLoss ||
          code == absl::StatusCode::kFailedPrecondition));
    return bad_input ? 2 : 1;
  }
  if (!config->snapshot_when_ready_dir.empty()) {
    sbx::vmm::TemplateOptions options;
    options.dir = config->snapshot_when_ready_dir;
    options.ready_timeout_ms = config->ready_timeout_s * 1000;
    options.working_set_ms = config->record_working_set_ms;
    // The VM's threads are filtered (Run); this thread, which drives the
    // agent, snapshots and builds the recording VM, is not.
    sbx::vmm::RestoreOptions recording;
    recording.seccomp = config->seccomp;
    absl::StatusOr<sbx::vmm::TemplateResult> made =
        sbx::vmm::MakeTemplate(*std::move(machine), options, recording);
    if (!made.ok()) {
      std::fprintf(stderr, "sbx-vmm: --snapshot-when-ready %s: %s\n",
                   options.dir.c_str(),
                   std::string(made.status().message()).c_str());
      switch (made.status().code()) {
        case absl::StatusCode::kDeadlineExceeded: return 6;
        case absl::StatusCode::kInvalidArgument: return 2;
        default: return 1;
      }
    }
    std::fprintf(stderr,
                 "sbx-vmm: template in %s: agent ready after %.1f s, %llu KiB "
                 "of RAM written%s\n",
                 options.dir.c_str(), made->ready_seconds,
                 static_cast<unsigned long long>(made->snapshot.memory_data_bytes >> 10),
                 made->working_set.has_value()
                     ? absl::StrCat(", working set ",
                                    made->working_set->read_pages +
                                        made->working_set->written_pages,
                                    " pages")
                           .c_str()
                     : "");
    return 0;
  }
  // The control channel, served until the VM ends (before the machine
  // goes: the handler uses it).
  std::unique_ptr<sbx::vmm::ControlServer> control;
  if (!config->control_path.empty()) {
    absl::StatusOr<std::unique_ptr<sbx::vmm::ControlServer>> server =
        sbx::vmm::ControlServer::Create(
            config->control_path, sbx::vmm::MachineControlHandler(**machine),
            config->seccomp);
    if (!server.ok()) {
      std::fprintf(stderr, "sbx-vmm: %s\n",
                   std::string(server.status().message()).c_str());
      return absl::IsInvalidArgument(server.status()) ? 2 : 1;
    }
    control = *std::move(server);
  }
  // Run filters the VM's threads and, once they run, this one (kMain).
  sbx::vmm::MachineExit exit = (*machine)->Run();
  control.reset();
  std::fprintf(stderr, "sbx-vmm: %s\n", exit.description.c_str());
  return sbx::vmm::ExitStatus(exit.kind);
}
