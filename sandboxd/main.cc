// sandboxd: the per-host daemon. See sandboxd/README.md.
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/time.h"
#include "base/logging.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/grpcpp.h"
#include "grpcpp/health_check_service_interface.h"
#include "sandboxd/cgroup/cgroup.h"
#include "sandboxd/manager.h"
#include "sandboxd/metrics.h"
#include "sandboxd/service.h"
#include "sandboxd/vm_process.h"
#include "sandboxd/vmm_jail.h"

namespace {

constexpr char kUsage[] = R"(usage: sandboxd [options]

The sbx sandbox daemon: serves the sbx.v1 gRPC API (sandboxes, templates).

  --state-dir DIR          templates, sandboxes, their disks and snapshots
                           (default /var/lib/sbx)
  --listen ADDR            unix:///PATH (default unix:///run/sbx/sandboxd.sock,
                           mode 0660) or tcp://HOST:PORT (needs a token)
  --token-file FILE        bearer token clients must send (TCP); also env
                           SBX_TOKEN
  --metrics ADDR           serve Prometheus metrics over HTTP on tcp://HOST:PORT
                           or unix:///PATH (GET /metrics); default: none
  --vmm PATH               the sbx-vmm binary (default: next to sandboxd)
  --kernel PATH            kernel of the default template (default: the one
                           scripts/setup built, /var/cache/sbx/kernel/current/vmlinux)
  --rootfs PATH            rootfs of the default template (default:
                           /var/cache/sbx/rootfs/current/rootfs.ext4)
  --max-vcpus N            per-sandbox bound (default 8)
  --max-memory-mib N       per-sandbox bound (default 16384)
  --max-disk-mib N         per-sandbox bound = every template's disk slot
                           (default 65536)
  --memory-overcommit R    admit sandboxes while their guest memory is at most
                           R x host memory (default 1.0)
  --idle-timeout D         default idle timeout (default 10m; 0 = never)
  --no-cgroups             no cgroup per VMM (no CPU/memory quotas)
  --jail-uids FIRST:COUNT  each jailed sbx-vmm runs as a uid (and gid) of its own
                           from this range, which nothing else on the host may
                           use (default 800000000:65536)
  --no-jail                UNSAFE, for debugging: run every sbx-vmm as
                           sandboxd's own user, in sandboxd's namespaces, with
                           its capabilities: a guest that escapes into its VMM
                           owns the host. The jail (the default) needs root.
  --help
)";

std::string ExeDir() {
  char buf[4096];
  ssize_t n = ::readlink("/proc/self/exe", buf, sizeof(buf) - 1);
  if (n <= 0) return ".";
  buf[n] = '\0';
  return std::filesystem::path(buf).parent_path().string();
}

std::string CacheDir() {
  const char* cache = std::getenv("SBX_CACHE");
  return cache != nullptr && *cache != '\0' ? cache : "/var/cache/sbx";
}

int Usage(const std::string& error) {
  std::fprintf(stderr, "sandboxd: %s\n%s", error.c_str(), kUsage);
  return 2;
}

// Removes a stale unix socket at `path` (one nothing listens on); refuses
// one that a live daemon serves.
bool PrepareUnixSocket(const std::string& path, std::string* error) {
  std::error_code ec;
  std::filesystem::create_directories(std::filesystem::path(path).parent_path(), ec);
  struct stat st;
  if (::lstat(path.c_str(), &st) != 0) return true;
  if (!S_ISSOCK(st.st_mode)) {
    *error = absl::StrCat(path, " exists and is not a socket");
    return false;
  }
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, path.c_str(), sizeof(addr.sun_path) - 1);
  bool live = ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
  ::close(fd);
  if (live) {
    *error = absl::StrCat("another sandboxd serves ", path);
    return false;
  }
  ::unlink(path.c_str());
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  using namespace sbx::sandboxd;
  std::string state_dir = "/var/lib/sbx";
  std::string listen = "unix:///run/sbx/sandboxd.sock";
  std::string token;
  std::string metrics_addr;
  std::string vmm = ExeDir() + "/../vmm/sbx-vmm";
  if (!std::filesystem::exists(vmm)) vmm = ExeDir() + "/sbx-vmm";
  ManagerOptions options;
  options.default_kernel = CacheDir() + "/kernel/current/vmlinux";
  options.default_rootfs = CacheDir() + "/rootfs/current/rootfs.ext4";
  bool cgroups = true;
  std::optional<VmmJailOptions> jail_uids;
  std::optional<VmmJailOptions> jail = VmmJailOptions{};
  if (const char* t = std::getenv("SBX_TOKEN"); t != nullptr) token = t;

  std::vector<std::string> args(argv + 1, argv + argc);
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    auto value = [&](std::string* out) {
      if (i + 1 >= args.size()) return false;
      *out = args[++i];
      return true;
    };
    std::string v;
    if (a == "--help" || a == "-h") {
      std::fputs(kUsage, stdout);
      return 0;
    } else if (a == "--no-cgroups") {
      cgroups = false;
    } else if (a == "--no-jail") {
      jail.reset();
    } else if (a == "--state-dir" || a == "--listen" || a == "--token-file" || a == "--vmm" ||
               a == "--kernel" || a == "--rootfs" || a == "--max-vcpus" ||
               a == "--max-memory-mib" || a == "--max-disk-mib" || a == "--memory-overcommit" ||
               a == "--idle-timeout" || a == "--metrics" || a == "--jail-uids") {
      if (!value(&v)) return Usage(a + " needs a value");
      uint64_t n = 0;
      if (a == "--state-dir") state_dir = v;
      else if (a == "--listen") listen = v;
      else if (a == "--metrics") metrics_addr = v;
      else if (a == "--jail-uids") {
        std::vector<std::string> parts = absl::StrSplit(v, ':');
        uint32_t first = 0, count = 0;
        if (parts.size() != 2 || !absl::SimpleAtoi(parts[0], &first) ||
            !absl::SimpleAtoi(parts[1], &count) || first == 0 || count == 0 ||
            uint64_t{first} + count > uint64_t{0xFFFFFFFE}) {
          return Usage(absl::StrCat("--jail-uids ", v,
                                    ": needs FIRST:COUNT, FIRST above 0, the range below 2^32-1"));
        }
        jail_uids = VmmJailOptions{.first_uid = first, .uid_count = count};
      }
      else if (a == "--vmm") vmm = v;
      else if (a == "--kernel") options.default_kernel = v;
      else if (a == "--rootfs") options.default_rootfs = v;
      else if (a == "--token-file") {
        std::ifstream in(v);
        if (!in || !std::getline(in, token) || token.empty()) {
          return Usage(absl::StrCat("--token-file ", v, ": cannot read a token from it"));
        }
      } else if (a == "--memory-overcommit") {
        double r;
        if (!absl::SimpleAtod(v, &r) || r <= 0 || r > 100) {
          return Usage("--memory-overcommit needs a ratio above 0");
        }
        options.memory_overcommit = r;
      } else if (a == "--idle-timeout") {
        absl::Duration d;
        if (!absl::ParseDuration(v, &d) || d < absl::ZeroDuration()) {
          return Usage(absl::StrCat("--idle-timeout: bad duration \"", v, "\" (e.g. 90s, 10m)"));
        }
        options.default_idle_timeout = d;
      } else {
        if (!absl::SimpleAtoi(v, &n) || n == 0) {
          return Usage(absl::StrCat(a, " needs a positive number"));
        }
        if (a == "--max-vcpus") options.max_vcpus = static_cast<uint32_t>(std::min<uint64_t>(n, 32));
        if (a == "--max-memory-mib") options.max_memory_mib = n;
        if (a == "--max-disk-mib") options.max_disk_mib = n;
      }
    } else {
      return Usage(absl::StrCat("unknown argument \"", a, "\""));
    }
  }
  // Listening address.
  std::string grpc_addr;
  std::string socket_path;
  if (absl::StartsWith(listen, "unix://")) {
    socket_path = listen.substr(7);
    if (socket_path.empty() || socket_path[0] != '/') {
      return Usage("--listen unix:// needs an absolute path (unix:///run/sbx/sandboxd.sock)");
    }
    grpc_addr = "unix:" + socket_path;
    std::string error;
    if (!PrepareUnixSocket(socket_path, &error)) {
      std::fprintf(stderr, "sandboxd: %s\n", error.c_str());
      return 1;
    }
  } else if (absl::StartsWith(listen, "tcp://")) {
    grpc_addr = listen.substr(6);
    if (token.empty()) {
      return Usage("TCP needs a bearer token: --token-file FILE or env SBX_TOKEN");
    }
  } else {
    return Usage(absl::StrCat("--listen ", listen, ": use unix:///PATH or tcp://HOST:PORT"));
  }
  if (::access(vmm.c_str(), X_OK) != 0) {
    std::fprintf(stderr, "sandboxd: no sbx-vmm at %s (give --vmm PATH)\n", vmm.c_str());
    return 1;
  }

  VmmBackendOptions backend_options;
  backend_options.vmm_binary = vmm;
  if (jail.has_value()) {
    if (jail_uids.has_value()) jail = *jail_uids;
    if (::geteuid() != 0) {
      std::fprintf(stderr,
                   "sandboxd: jailing each sbx-vmm (namespaces, its own uid, no "
                   "capabilities) needs root; run sandboxd as root, or give --no-jail "
                   "(UNSAFE: every VMM then runs as uid %u with all its access)\n",
                   static_cast<unsigned>(::geteuid()));
      return 1;
    }
    if (absl::Status s = CheckUidRangeIsFree(*jail); !s.ok()) {
      std::fprintf(stderr, "sandboxd: %s\n", std::string(s.message()).c_str());
      return 1;
    }
    if (absl::Status s = CheckStaticExecutable(vmm); !s.ok()) {
      std::fprintf(stderr, "sandboxd: %s\n", std::string(s.message()).c_str());
      return 1;
    }
    backend_options.jail = jail;
  } else {
    std::fprintf(stderr,
                 "sandboxd: WARNING: --no-jail: UNSAFE. Every sbx-vmm runs as uid %u in "
                 "sandboxd's namespaces, seeing every file and network sandboxd sees; a "
                 "guest that escapes into its VMM owns this host. For debugging only.\n",
                 static_cast<unsigned>(::geteuid()));
  }
  if (cgroups) {
    absl::StatusOr<CgroupRoot> root = CgroupRoot::Open();
    if (!root.ok()) {
      std::fprintf(stderr,
                   "sandboxd: cgroups unavailable (%s): quotas need them; "
                   "--no-cgroups runs without\n",
                   std::string(root.status().message()).c_str());
      return 1;
    }
    backend_options.cgroups = std::move(*root);
  }
  options.state_dir = state_dir;
  options.make_disk = MakeSandboxDisk;
  // Block the signals we wait for before any thread starts.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  ::signal(SIGPIPE, SIG_IGN);

  absl::StatusOr<std::unique_ptr<Manager>> manager =
      Manager::Create(options, NewVmmBackend(std::move(backend_options)));
  if (!manager.ok()) {
    std::fprintf(stderr, "sandboxd: %s\n", manager.status().ToString().c_str());
    return 1;
  }
  Authorizer auth(absl::StartsWith(listen, "tcp://") ? token : "");
  SandboxService sandboxes(**manager, auth);
  TemplateService templates(**manager, auth);
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(grpc_addr, grpc::InsecureServerCredentials(), &port);
  builder.RegisterService(&sandboxes);
  builder.RegisterService(&templates);
  builder.SetMaxReceiveMessageSize(8 << 20);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr) {
    std::fprintf(stderr, "sandboxd: cannot listen on %s\n", listen.c_str());
    return 1;
  }
  if (!socket_path.empty()) ::chmod(socket_path.c_str(), 0660);
  std::unique_ptr<MetricsServer> metrics;
  if (!metrics_addr.empty()) {
    absl::StatusOr<std::unique_ptr<MetricsServer>> m =
        MetricsServer::Start(metrics_addr, [&] { return RenderMetrics((*manager)->Stats()); });
    if (!m.ok()) {
      std::fprintf(stderr, "sandboxd: metrics: %s\n", m.status().ToString().c_str());
      return 1;
    }
    metrics = std::move(*m);
  }
  SBX_LOG(INFO) << "sandboxd: serving on " << listen << ", state in " << state_dir;

  int sig = 0;
  sigwait(&signals, &sig);
  SBX_LOG(INFO) << "sandboxd: " << strsignal(sig) << ": stopping (running sandboxes keep running)";
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5));
  metrics.reset();
  manager->reset();
  if (!socket_path.empty()) ::unlink(socket_path.c_str());
  // Everything is stopped and saved. Returning would run gRPC's global
  // shutdown, which can wait ~9 s for an executor thread in epoll_wait
  // (gRPC 1.51): a SIGTERM'd daemon ends now instead.
  std::fflush(nullptr);
  std::_Exit(0);
}
