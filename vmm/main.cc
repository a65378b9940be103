// sbx-vmm: boots one Linux guest in a KVM VM. See Usage() in config.cc.
#include <cstdio>
#include <string>
#include <vector>

#include "base/logging.h"
#include "vmm/config.h"
#include "vmm/control_server.h"
#include "vmm/machine.h"

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
  // The control channel, served until the VM ends (before the machine
  // goes: the handler uses it).
  std::unique_ptr<sbx::vmm::ControlServer> control;
  if (!config->control_path.empty()) {
    absl::StatusOr<std::unique_ptr<sbx::vmm::ControlServer>> server =
        sbx::vmm::ControlServer::Create(
            config->control_path, sbx::vmm::MachineControlHandler(**machine));
    if (!server.ok()) {
      std::fprintf(stderr, "sbx-vmm: %s\n",
                   std::string(server.status().message()).c_str());
      return absl::IsInvalidArgument(server.status()) ? 2 : 1;
    }
    control = *std::move(server);
  }
  sbx::vmm::MachineExit exit = (*machine)->Run();
  control.reset();
  std::fprintf(stderr, "sbx-vmm: %s\n", exit.description.c_str());
  return sbx::vmm::ExitStatus(exit.kind);
}
