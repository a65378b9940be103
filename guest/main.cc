// sbx-agent: the guest's PID 1, serving the host over vsock.
//
//   sbx-agent                      as PID 1 in a guest (what the VM runs)
//   sbx-agent --listen unix:PATH   on a host, for tests: serve on a unix
//                                  socket, change nothing of the machine
//   sbx-agent --listen vsock:PORT  in a guest, but not as init

#include <signal.h>
#include <sys/reboot.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <string>
#include <string_view>

#include "absl/strings/numbers.h"
#include "base/logging.h"
#include "guest/agent.h"
#include "guest/init.h"

namespace sbx::agent {
namespace {

constexpr char kUsage[] =
    "usage: sbx-agent [--listen unix:PATH | --listen vsock:PORT] [--version]\n"
    "As PID 1 (the guest's init) it sets up the root filesystem and listens\n"
    "on the vsock port of the kernel parameter sbx.port (default 1024).\n";

// PID 1 must never exit (the kernel panics): on a fatal error it says why
// on the console and ends the VM.
[[noreturn]] void HaltGuest(const absl::Status& status) {
  SBX_LOG(ERROR) << "sbx-agent cannot go on: " << status;
  sync();
  reboot(RB_AUTOBOOT);
  while (true) pause();
}

int RunAsInit() {
  absl::StatusOr<std::string> cmdline = ReadKernelCmdline();
  if (!cmdline.ok()) HaltGuest(cmdline.status());
  absl::StatusOr<GuestParams> params = ParseGuestParams(*cmdline);
  if (!params.ok()) HaltGuest(params.status());
  absl::Status setup = SetUpGuest(*params);
  if (!setup.ok()) HaltGuest(setup);
  std::unique_ptr<System> system = NewGuestSystem();
  absl::StatusOr<std::unique_ptr<Agent>> agent =
      Agent::Create({.pid1 = true,
                     .system = system.get(),
                     .late_disk = params->upper_late});
  if (!agent.ok()) HaltGuest(agent.status());
  absl::StatusOr<UniqueFd> listener = ListenVsock(params->port);
  if (!listener.ok()) HaltGuest(listener.status());
  // The host's tests and tools wait for this line on the console.
  SBX_LOG(INFO) << "sbx-agent " << kAgentVersion << " ready on vsock port "
                << params->port;
  HaltGuest((*agent)->Serve(listener->get()));
}

int RunListening(std::string_view where) {
  absl::StatusOr<UniqueFd> listener;
  if (where.substr(0, 5) == "unix:") {
    listener = ListenUnix(where.substr(5));
  } else if (where.substr(0, 6) == "vsock:") {
    uint32_t port;
    if (!absl::SimpleAtoi(std::string(where.substr(6)), &port)) {
      fprintf(stderr, "sbx-agent: bad vsock port in --listen %s\n",
              std::string(where).c_str());
      return 2;
    }
    listener = ListenVsock(port);
  } else {
    fprintf(stderr, "sbx-agent: --listen takes unix:PATH or vsock:PORT\n%s",
            kUsage);
    return 2;
  }
  if (!listener.ok()) {
    fprintf(stderr, "sbx-agent: %s\n", listener.status().ToString().c_str());
    return 1;
  }
  std::unique_ptr<System> system = NewHostSystem();
  absl::StatusOr<std::unique_ptr<Agent>> agent =
      Agent::Create({.pid1 = false, .system = system.get()});
  if (!agent.ok()) {
    fprintf(stderr, "sbx-agent: %s\n", agent.status().ToString().c_str());
    return 1;
  }
  SBX_LOG(INFO) << "sbx-agent " << kAgentVersion << " listening on " << where;
  absl::Status served = (*agent)->Serve(listener->get());
  if (!served.ok()) {
    fprintf(stderr, "sbx-agent: %s\n", served.ToString().c_str());
    return 1;
  }
  return 0;
}

}  // namespace
}  // namespace sbx::agent

int main(int argc, char** argv) {
  // Peers that vanish are errors on write (EPIPE), not signals.
  signal(SIGPIPE, SIG_IGN);
  std::string_view listen;
  for (int i = 1; i < argc; ++i) {
    std::string_view arg = argv[i];
    if (arg == "--version") {
      printf("sbx-agent %s\n", sbx::agent::kAgentVersion);
      return 0;
    } else if (arg == "--help" || arg == "-h") {
      fputs(sbx::agent::kUsage, stdout);
      return 0;
    } else if (arg == "--listen" && i + 1 < argc) {
      listen = argv[++i];
    } else if (getpid() == 1) {
      // The kernel hands init the command line words it does not know.
      continue;
    } else {
      fprintf(stderr, "sbx-agent: unknown argument %s\n%s", argv[i],
              sbx::agent::kUsage);
      return 2;
    }
  }
  if (!listen.empty()) return sbx::agent::RunListening(listen);
  if (getpid() != 1) {
    fprintf(stderr, "sbx-agent: not PID 1; give --listen to serve anyway\n%s",
            sbx::agent::kUsage);
    return 2;
  }
  return sbx::agent::RunAsInit();
}
