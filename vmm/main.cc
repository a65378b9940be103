// sbx-vmm: boots one Linux guest in a KVM VM. See Usage() in config.cc.
#include <cstdio>
#include <string>
#include <vector>

#include "base/logging.h"
#include "vmm/config.h"
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
  absl::StatusOr<std::unique_ptr<sbx::vmm::Machine>> machine =
      sbx::vmm::Machine::Create(*config);
  if (!machine.ok()) {
    std::fprintf(stderr, "sbx-vmm: %s\n",
                 std::string(machine.status().message()).c_str());
    return machine.status().code() == absl::StatusCode::kInvalidArgument ? 2 : 1;
  }
  sbx::vmm::MachineExit exit = (*machine)->Run();
  std::fprintf(stderr, "sbx-vmm: %s\n", exit.description.c_str());
  return sbx::vmm::ExitStatus(exit.kind);
}
