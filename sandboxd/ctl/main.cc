// sandboxctl: the command line over sandboxd's gRPC API. The commands live
// in commands.cc; this file wires them to the process: arguments, stdio,
// Ctrl-C, the channel, and an embedded sandboxd for `run` when none listens.

#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "sandboxd/ctl/args.h"
#include "sandboxd/ctl/commands.h"
#include "sandboxd/ctl/embedded_daemon.h"

namespace {

int g_interrupt_wr = -1;
std::atomic<int> g_interrupts{0};

// One byte per Ctrl-C for the command to act on; the third one ends
// sandboxctl the default way, in case nothing is listening.
void OnSigint(int) {
  int saved = errno;
  if (++g_interrupts >= 3) {
    signal(SIGINT, SIG_DFL);
    raise(SIGINT);
  }
  [[maybe_unused]] ssize_t n = write(g_interrupt_wr, "i", 1);
  errno = saved;
}

std::string SelfExe() {
  std::string buf(4096, '\0');
  ssize_t n = readlink("/proc/self/exe", buf.data(), buf.size() - 1);
  if (n <= 0) return "";
  buf.resize(static_cast<size_t>(n));
  return buf;
}

}  // namespace

int main(int argc, char** argv) {
  using namespace sbx::ctl;
  std::ios::sync_with_stdio(false);
  signal(SIGPIPE, SIG_IGN);

  std::vector<std::string> args(argv + 1, argv + argc);
  Command command = Command::kNone;
  absl::StatusOr<Options> parsed = ParseArgs(
      args, [](const char* name) -> const char* { return getenv(name); }, &command);
  if (!parsed.ok()) {
    std::cerr << "sandboxctl: " << parsed.status().message() << "\n\n" << Usage(command);
    return kExitUsage;
  }
  const Options& o = *parsed;
  if (o.help) {
    std::cout << Usage(o.command);
    return 0;
  }

  std::unique_ptr<EmbeddedDaemon> daemon;
  std::string addr = o.addr;
  if (o.command == Command::kRun && !o.addr_explicit && NothingListensAt(addr)) {
    std::cerr << "starting sandboxd...\n";
    const char* binary = getenv("SBX_SANDBOXD");
    auto started = EmbeddedDaemon::Start(
        binary != nullptr && *binary != '\0' ? binary : FindSandboxd(SelfExe()), o.state_dir);
    if (!started.ok()) {
      std::cerr << "sandboxctl: run: starting sandboxd: " << started.status().message() << "\n";
      return kExitError;
    }
    daemon = std::move(*started);
    addr = daemon->addr();
  }

  absl::StatusOr<std::shared_ptr<grpc::Channel>> channel = Connect(addr);
  if (!channel.ok()) {
    std::cerr << "sandboxctl: " << channel.status().message() << "\n";
    return kExitUsage;
  }
  auto sandboxes = sbx::v1::Sandboxes::NewStub(*channel);
  auto templates = sbx::v1::Templates::NewStub(*channel);
  Api api;
  api.sandboxes = sandboxes.get();
  api.templates = templates.get();
  api.token = o.token;
  api.addr = addr;
  api.addr_is_default = !o.addr_explicit && daemon == nullptr;
  api.channel = *channel;

  Io io;
  io.out = &std::cout;
  io.err = &std::cerr;
  io.in_fd = 0;
  io.in_is_tty = isatty(0);
  io.err_is_tty = isatty(2);
  // Commands that stream (run, exec, cp, cat) act on Ctrl-C themselves;
  // the rest keep the default (sandboxctl ends at once).
  if (o.command == Command::kRun || o.command == Command::kExec ||
      o.command == Command::kCp || o.command == Command::kCat) {
    int fds[2];
    if (pipe2(fds, O_CLOEXEC | O_NONBLOCK) == 0) {
      g_interrupt_wr = fds[1];
      io.interrupt_fd = fds[0];
      struct sigaction sa = {};
      sa.sa_handler = OnSigint;
      sigemptyset(&sa.sa_mask);
      sigaction(SIGINT, &sa, nullptr);
    }
  }

  int code = RunCommand(o, api, io);
  std::cout.flush();
  if (daemon != nullptr) {
    // Hang up before stopping it: a server shutting down waits a while
    // for connected clients.
    api = Api();
    sandboxes.reset();
    templates.reset();
    channel->reset();
    daemon.reset();
  }
  return code;
}
