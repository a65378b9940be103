// test_sandboxd: sandboxd's real gRPC services and Manager over a unix
// socket, with the test VM backend (testing/fake_backend.h): each "VM" is a
// real sbx-agent on a unix socket, so execs and file operations run on
// this host (guest paths are host paths). For clients in other languages
// (tests/python/client_test.py) that need a daemon without KVM or images.
//
//   test_sandboxd --listen unix:///PATH --state-dir DIR [--token T]
//
// The default template's kernel and rootfs are placeholder files made in
// DIR/images. grpc.health.v1 and server reflection are on, as in sandboxd.
// SIGTERM or SIGINT stops the server and kills every fake VM.
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/grpcpp.h"
#include "grpcpp/health_check_service_interface.h"
#include "sandboxd/manager.h"
#include "sandboxd/service.h"
#include "sandboxd/testing/fake_backend.h"

namespace {

constexpr char kUsage[] =
    "usage: test_sandboxd --listen unix:///PATH --state-dir DIR [--token T]\n";

int Usage(const std::string& error) {
  std::fprintf(stderr, "test_sandboxd: %s\n%s", error.c_str(), kUsage);
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  using namespace sbx::sandboxd;
  std::string listen;
  std::string state_dir;
  std::string token;
  std::vector<std::string> args(argv + 1, argv + argc);
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a == "--help" || a == "-h") {
      std::fputs(kUsage, stdout);
      return 0;
    }
    if (a != "--listen" && a != "--state-dir" && a != "--token") {
      return Usage(absl::StrCat("unknown argument \"", a, "\""));
    }
    if (i + 1 >= args.size()) return Usage(a + " needs a value");
    const std::string& v = args[++i];
    if (a == "--listen") listen = v;
    else if (a == "--state-dir") state_dir = v;
    else token = v;
  }
  if (!absl::StartsWith(listen, "unix:///")) return Usage("--listen needs unix:///PATH");
  if (state_dir.empty()) return Usage("--state-dir is required");
  const std::string socket_path = listen.substr(7);

  // Placeholder images for the default template: the fake backend boots
  // nothing, but the manager resolves and records their paths.
  std::error_code ec;
  std::filesystem::create_directories(state_dir + "/images", ec);
  std::filesystem::create_directories(std::filesystem::path(socket_path).parent_path(), ec);
  ::unlink(socket_path.c_str());
  std::ofstream(state_dir + "/images/vmlinux") << "fake kernel";
  std::ofstream(state_dir + "/images/rootfs.ext4") << "fake rootfs";

  ManagerOptions options;
  options.state_dir = state_dir + "/state";
  options.default_kernel = state_dir + "/images/vmlinux";
  options.default_rootfs = state_dir + "/images/rootfs.ext4";
  options.host_memory_bytes = uint64_t{64} << 30;  // admission independent of this host
  options.max_disk_mib = 4096;                     // the fake disks are sparse, but small
  options.make_disk = testing::FakeMakeDisk;

  // Block the signals we wait for before any thread starts.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  ::signal(SIGPIPE, SIG_IGN);

  auto registry = std::make_shared<testing::Registry>();
  absl::StatusOr<std::unique_ptr<Manager>> manager = Manager::Create(
      options, std::make_unique<testing::FakeBackend>(registry, SBX_AGENT_BINARY));
  if (!manager.ok()) {
    std::fprintf(stderr, "test_sandboxd: %s\n", manager.status().ToString().c_str());
    return 1;
  }
  Authorizer auth(token);
  SandboxService sandboxes(**manager, auth);
  TemplateService templates(**manager, auth);
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  builder.AddListeningPort("unix:" + socket_path, grpc::InsecureServerCredentials());
  builder.RegisterService(&sandboxes);
  builder.RegisterService(&templates);
  builder.SetMaxReceiveMessageSize(8 << 20);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr) {
    std::fprintf(stderr, "test_sandboxd: cannot listen on %s\n", listen.c_str());
    return 1;
  }
  std::fprintf(stderr, "test_sandboxd: serving on %s, state in %s\n", listen.c_str(),
               state_dir.c_str());

  int sig = 0;
  sigwait(&signals, &sig);
  std::fprintf(stderr, "test_sandboxd: %s: stopping\n", strsignal(sig));
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5));
  manager->reset();
  {
    // Unlike sandboxd, nothing adopts these VMs later: end them all.
    absl::MutexLock lock(&registry->mu);
    for (const auto& [pid, dir] : registry->live) testing::KillAndReap(pid);
    registry->live.clear();
  }
  ::unlink(socket_path.c_str());
  // Nothing is left to tear down. Returning would run ~ServerBuilder's
  // final grpc_shutdown(), which in gRPC 1.51 joins its executor threads
  // and was seen waiting ~9 s for one parked in epoll_wait until its next
  // timer: exit now instead.
  std::fflush(nullptr);
  std::_Exit(0);
}
