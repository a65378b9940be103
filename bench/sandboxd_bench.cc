// sandboxd_bench: the product path, end to end: the real sandboxd binary
// (from this build tree) with real sbx-vmm VMs (the Linux kernel and rootfs
// of the image cache), driven through its gRPC API (sbx.v1) as a client
// would. Run by bench/sandboxd (needs /dev/kvm: it goes through
// scripts/in-kvm-vm where there is none). A plain driver, not Google
// Benchmark: every sample is a VM lifecycle with untimed setup around it,
// and the memory rows are not times.
//
// One template build (Templates.Create "default", BENCH_MEMORY_MIB of guest
// memory), then, each over BENCH_RUNS samples (median, p90, min, max):
// * create -> first exec result: Create, then Exec `echo` until its Exited
//   event (Delete after, not timed); also the two halves apart
// * sleep: the Sleep call of a sandbox that ran an exec (-> SLEEPING)
// * wake -> first exec result: Exec `echo` on the sleeping sandbox (the
//   Exec wakes it) until its Exited event
// * exec on a running sandbox: Exec `echo` until Exited (the gRPC + agent
//   round trip without a VM start)
// * the same template snapshot restored by a plain sbx-vmm (no daemon, no
//   gRPC: the argv sandboxd uses, a blank disk of the slot's size, no
//   AttachDisk, no cgroup) -> the agent's first answer -> AfterRestore -> an
//   agent exec of `echo`: what the daemon adds is the difference
// Host memory of idle sandboxes: BENCH_IDLE sandboxes created, one exec each,
// left idle BENCH_SETTLE s; the sum of the PSS of their sbx-vmm processes
// (/proc/PID/smaps_rollup) / BENCH_IDLE, and what that makes of a 24 GiB
// host (an extrapolation); then all of them slept: their host memory (none:
// no process) and their disk (allocated blocks of each sandbox directory).
#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "grpcpp/grpcpp.h"
#include "guest/client.h"
#include "sbx/v1/sandbox.grpc.pb.h"

extern char** environ;

namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

double MsSince(Clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
}

uint64_t EnvU64(const char* name, uint64_t fallback) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return fallback;
  char* end = nullptr;
  unsigned long long n = std::strtoull(v, &end, 10);
  if (end == v || *end != '\0') {
    std::fprintf(stderr, "sandboxd_bench: %s=%s is not a number\n", name, v);
    std::exit(2);
  }
  return n;
}

double EnvDouble(const char* name, double fallback) {
  const char* v = std::getenv(name);
  return v == nullptr || *v == '\0' ? fallback : std::atof(v);
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

std::string Tail(const std::string& text, size_t lines) {
  size_t pos = text.size();
  while (lines-- > 0 && pos > 0) {
    pos = text.rfind('\n', pos - 1);
    if (pos == std::string::npos) return text;
  }
  return text.substr(pos);
}

// Everything the run started, ended on any exit path.
struct Cleanup {
  std::string work;
  std::string state;
  pid_t daemon = 0;
  std::vector<pid_t> vmms;  // direct restores
  std::function<void()> delete_sandboxes;
};
Cleanup g_cleanup;

void CleanupAll() {
  if (g_cleanup.delete_sandboxes) {
    auto f = std::move(g_cleanup.delete_sandboxes);
    g_cleanup.delete_sandboxes = nullptr;
    f();
  }
  for (pid_t p : g_cleanup.vmms) {
    ::kill(p, SIGKILL);
    ::waitpid(p, nullptr, 0);
  }
  g_cleanup.vmms.clear();
  if (g_cleanup.daemon > 0) {
    ::kill(g_cleanup.daemon, SIGTERM);
    ::waitpid(g_cleanup.daemon, nullptr, 0);
    g_cleanup.daemon = 0;
  }
  if (!g_cleanup.work.empty()) {
    std::error_code ec;
    fs::remove_all(g_cleanup.work, ec);
    g_cleanup.work.clear();
  }
}

[[noreturn]] void Die(const char* fmt, ...) {
  std::fflush(stdout);
  std::fprintf(stderr, "sandboxd_bench: ");
  va_list ap;
  va_start(ap, fmt);
  std::vfprintf(stderr, fmt, ap);
  va_end(ap);
  std::fprintf(stderr, "\n");
  if (!g_cleanup.state.empty()) {
    std::fprintf(stderr, "sandboxd's log (tail):\n%s\n",
                 Tail(ReadFile(g_cleanup.state + ".log"), 40).c_str());
  }
  CleanupAll();
  std::exit(1);
}

// The sbx-vmm processes whose command line names `needle` (a path under
// sandboxd's state directory): its VMs.
std::vector<pid_t> VmmPids(const std::string& needle) {
  std::vector<pid_t> pids;
  DIR* d = ::opendir("/proc");
  if (d == nullptr) return pids;
  while (dirent* e = ::readdir(d)) {
    char* end;
    long pid = std::strtol(e->d_name, &end, 10);
    if (*end != '\0' || pid <= 0) continue;
    std::string cmd = ReadFile("/proc/" + std::string(e->d_name) + "/cmdline");
    std::string argv0 = cmd.substr(0, cmd.find('\0'));
    if (argv0.size() < 7 || argv0.compare(argv0.size() - 7, 7, "sbx-vmm") != 0) continue;
    if (cmd.find(needle) == std::string::npos) continue;
    pids.push_back(static_cast<pid_t>(pid));
  }
  ::closedir(d);
  return pids;
}

// Pss: of /proc/PID/smaps_rollup, KiB (0 if gone).
uint64_t PssKib(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/smaps_rollup");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("Pss:", 0) == 0) return std::strtoull(line.c_str() + 4, nullptr, 10);
  }
  return 0;
}

// Allocated bytes of everything under `dir` (du).
uint64_t DiskBytes(const std::string& dir) {
  uint64_t total = 0;
  std::error_code ec;
  for (auto it = fs::recursive_directory_iterator(dir, ec); !ec && it != fs::end(it);
       it.increment(ec)) {
    struct stat st;
    if (::lstat(it->path().c_str(), &st) == 0) total += static_cast<uint64_t>(st.st_blocks) * 512;
  }
  return total;
}

struct Stats {
  double median = 0, p90 = 0, min = 0, max = 0;
  size_t n = 0;
};
Stats Summarize(std::vector<double> v) {
  Stats s;
  if (v.empty()) return s;
  std::sort(v.begin(), v.end());
  s.n = v.size();
  s.median = v.size() % 2 ? v[v.size() / 2] : (v[v.size() / 2 - 1] + v[v.size() / 2]) / 2;
  s.p90 = v[static_cast<size_t>(std::ceil(0.9 * static_cast<double>(v.size()))) - 1];
  s.min = v.front();
  s.max = v.back();
  return s;
}

void Row(const std::string& name, const Stats& s) {
  std::printf("%-52s%10.1f%10.1f%10.1f%10.1f\n", name.c_str(), s.median, s.p90, s.min, s.max);
  std::fflush(stdout);
}

std::unique_ptr<grpc::ClientContext> Ctx(int seconds = 600) {
  auto ctx = std::make_unique<grpc::ClientContext>();
  ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(seconds));
  return ctx;
}

pid_t Spawn(const std::vector<std::string>& args, const std::string& log) {
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&fa, 1, log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0600);
  posix_spawn_file_actions_adddup2(&fa, 1, 2);
  std::vector<char*> argv;
  for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  pid_t pid = 0;
  int rc = posix_spawn(&pid, argv[0], &fa, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  if (rc != 0) Die("cannot start %s: %s", args[0].c_str(), std::strerror(rc));
  return pid;
}

class Api {
 public:
  explicit Api(const std::string& socket) {
    channel_ = grpc::CreateChannel("unix:" + socket, grpc::InsecureChannelCredentials());
    if (!channel_->WaitForConnected(std::chrono::system_clock::now() + std::chrono::seconds(120))) {
      Die("sandboxd did not listen on %s", socket.c_str());
    }
    sandboxes_ = sbx::v1::Sandboxes::NewStub(channel_);
    templates_ = sbx::v1::Templates::NewStub(channel_);
  }

  sbx::v1::Template BuildTemplate(uint64_t memory_mib) {
    sbx::v1::CreateTemplateRequest r;
    r.set_name("default");
    r.set_memory_mib(memory_mib);
    auto ctx = Ctx(1200);
    auto reader = templates_->Create(ctx.get(), r);
    sbx::v1::TemplateProgress p;
    sbx::v1::Template t;
    while (reader->Read(&p)) {
      if (p.has_template_()) t = p.template_();
    }
    grpc::Status st = reader->Finish();
    if (!st.ok()) Die("Templates.Create: %s", st.error_message().c_str());
    if (t.state() != sbx::v1::READY) Die("Templates.Create: template not READY: %s", t.failure().c_str());
    return t;
  }

  std::string Create() {
    sbx::v1::CreateSandboxRequest r;
    sbx::v1::Sandbox s;
    auto ctx = Ctx();
    grpc::Status st = sandboxes_->Create(ctx.get(), r, &s);
    if (!st.ok()) Die("Create: %s", st.error_message().c_str());
    if (s.state() != sbx::v1::RUNNING) Die("Create: %s is not RUNNING", s.id().c_str());
    return s.id();
  }

  // Exec `echo bench` until its Exited event (the first exec result).
  void Echo(const std::string& id) {
    sbx::v1::ExecRequest r;
    r.set_sandbox_id(id);
    r.add_argv("echo");
    r.add_argv("bench");
    auto ctx = Ctx();
    auto reader = sandboxes_->Exec(ctx.get(), r);
    sbx::v1::ExecEvent e;
    std::string out;
    bool exited = false;
    int code = -1;
    while (!exited && reader->Read(&e)) {
      out += e.stdout();
      if (e.has_exited()) {
        exited = true;
        code = e.exited().exit_code();
      }
    }
    if (exited) {
      while (reader->Read(&e)) {
      }
    }
    grpc::Status st = reader->Finish();
    if (!st.ok()) Die("Exec in %s: %s", id.c_str(), st.error_message().c_str());
    if (!exited || code != 0 || out != "bench\n") {
      Die("Exec in %s: exited=%d code=%d out='%s'", id.c_str(), exited, code, out.c_str());
    }
  }

  sbx::v1::Sandbox Get(const std::string& id) {
    sbx::v1::GetSandboxRequest r;
    r.set_id(id);
    sbx::v1::Sandbox s;
    auto ctx = Ctx();
    grpc::Status st = sandboxes_->Get(ctx.get(), r, &s);
    if (!st.ok()) Die("Get %s: %s", id.c_str(), st.error_message().c_str());
    return s;
  }

  void Sleep(const std::string& id) {
    sbx::v1::SleepRequest r;
    r.set_id(id);
    sbx::v1::Sandbox s;
    auto ctx = Ctx();
    grpc::Status st = sandboxes_->Sleep(ctx.get(), r, &s);
    if (!st.ok()) Die("Sleep %s: %s", id.c_str(), st.error_message().c_str());
    if (s.state() != sbx::v1::SLEEPING) Die("Sleep %s: state %d", id.c_str(), s.state());
  }

  grpc::Status Delete(const std::string& id) {
    sbx::v1::DeleteSandboxRequest r;
    r.set_id(id);
    sbx::v1::DeleteSandboxResponse out;
    auto ctx = Ctx();
    return sandboxes_->Delete(ctx.get(), r, &out);
  }

  std::vector<std::string> List() {
    std::vector<std::string> ids;
    sbx::v1::ListSandboxesRequest r;
    r.set_page_size(1000);
    sbx::v1::ListSandboxesResponse out;
    auto ctx = Ctx(30);
    if (sandboxes_->List(ctx.get(), r, &out).ok()) {
      for (const auto& s : out.sandboxes()) ids.push_back(s.id());
    }
    return ids;
  }

 private:
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<sbx::v1::Sandboxes::Stub> sandboxes_;
  std::unique_ptr<sbx::v1::Templates::Stub> templates_;
};

// The template's snapshot restored by a plain sbx-vmm (sandboxd's argv for
// a new sandbox, with a blank sparse disk of the slot's size that the guest
// never touches: no AttachDisk, no cgroup): ms to the agent's first answer,
// and, after the agent's AfterRestore (as sandboxd does), to the Exited of
// an agent exec of `echo`.
struct Direct {
  double ping_ms = 0, exec_ms = 0;
};
Direct DirectRestore(const std::string& vmm, const std::string& snapshot, const std::string& rootfs,
                     uint64_t disk_bytes, const std::string& dir) {
  fs::remove_all(dir);
  fs::create_directories(dir);
  const std::string disk = dir + "/disk.img";
  {
    int fd = ::open(disk.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0 || ::ftruncate(fd, static_cast<off_t>(disk_bytes)) != 0) Die("cannot make %s", disk.c_str());
    ::close(fd);
  }
  const std::vector<std::string> args = {vmm, "--restore", snapshot, "--disk", rootfs, "--disk", disk,
                                         "--vsock", dir + "/vsock.sock", "--control",
                                         dir + "/control.sock", "--console", dir + "/console.log"};
  sbx::agent::Client agent(sbx::agent::NewVsockDialer(dir + "/vsock.sock", 1024));
  Direct d;
  const Clock::time_point t0 = Clock::now();
  pid_t pid = Spawn(args, dir + "/vmm.log");
  g_cleanup.vmms.push_back(pid);
  // Polled as sandboxd polls (VmmVm::WaitForAgent: every 20 ms).
  while (true) {
    if (agent.Ping().ok()) break;
    int status;
    if (::waitpid(pid, &status, WNOHANG) == pid) {
      g_cleanup.vmms.pop_back();
      Die("direct sbx-vmm restore ended before its agent answered: %s",
          Tail(ReadFile(dir + "/vmm.log"), 20).c_str());
    }
    if (MsSince(t0) > 300'000) Die("direct sbx-vmm restore: no agent answer in 300 s");
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  d.ping_ms = MsSince(t0);
  // As sandboxd does after every restore: fresh entropy, the host's clock.
  char entropy[32] = {};
  if (::getrandom(entropy, sizeof(entropy), 0) != sizeof(entropy)) Die("getrandom failed");
  timespec now;
  ::clock_gettime(CLOCK_REALTIME, &now);
  if (absl::Status s = agent.AfterRestore(std::string_view(entropy, sizeof(entropy)),
                                          int64_t{now.tv_sec} * 1'000'000'000 + now.tv_nsec);
      !s.ok()) {
    Die("direct restore: agent AfterRestore: %s", s.ToString().c_str());
  }
  auto r = agent.Run(std::vector<std::string>{"echo", "bench"});
  d.exec_ms = MsSince(t0);
  if (!r.ok() || r->stdout_data != "bench\n") Die("direct restore: agent exec of echo failed");
  ::kill(pid, SIGKILL);
  ::waitpid(pid, nullptr, 0);
  g_cleanup.vmms.pop_back();
  fs::remove_all(dir);
  return d;
}

}  // namespace

int main() {
  const uint64_t runs = std::max<uint64_t>(1, EnvU64("BENCH_RUNS", 10));
  const uint64_t idle = std::max<uint64_t>(1, EnvU64("BENCH_IDLE", 4));
  const uint64_t memory_mib = EnvU64("BENCH_MEMORY_MIB", 256);
  const double settle_s = EnvDouble("BENCH_SETTLE", 2);
  constexpr uint64_t kHostBytes = uint64_t{24} << 30;

  const fs::path exe = fs::read_symlink("/proc/self/exe");
  const std::string build = exe.parent_path().parent_path().string();
  const std::string sandboxd = build + "/sandboxd/sandboxd";
  const std::string vmm = build + "/vmm/sbx-vmm";
  const char* cache_env = std::getenv("SBX_CACHE");
  const std::string cache = cache_env != nullptr && *cache_env ? cache_env : "/var/cache/sbx";
  const std::string kernel = cache + "/kernel/current/vmlinux";
  const std::string rootfs = cache + "/rootfs/current/rootfs.ext4";
  if (::access("/dev/kvm", R_OK | W_OK) != 0) Die("needs /dev/kvm (run bench/sandboxd)");
  for (const std::string& f : {sandboxd, vmm}) {
    if (::access(f.c_str(), X_OK) != 0) Die("%s is missing (build sandboxd sbx-vmm sbx-agent)", f.c_str());
  }
  for (const std::string& f : {kernel, rootfs}) {
    if (::access(f.c_str(), R_OK) != 0) Die("%s is missing (scripts/setup builds the images)", f.c_str());
  }

  const char* tmp = std::getenv("TMPDIR");
  std::string pattern = std::string(tmp != nullptr && *tmp ? tmp : "/tmp") + "/sbx-bench-sandboxd.XXXXXX";
  if (::mkdtemp(pattern.data()) == nullptr) Die("mkdtemp: %s", std::strerror(errno));
  g_cleanup.work = pattern;
  const std::string state = pattern + "/state";
  const std::string socket = pattern + "/sd.sock";
  g_cleanup.state = state;
  ::signal(SIGINT, [](int) { CleanupAll(); std::_Exit(130); });
  ::signal(SIGTERM, [](int) { CleanupAll(); std::_Exit(143); });

  // --idle-timeout 0: nothing sleeps by itself during the run.
  // --memory-overcommit 8: BENCH_IDLE is not bounded by the small emulated
  // host's admission limit (this measures cost, not admission).
  g_cleanup.daemon = Spawn({sandboxd, "--state-dir", state, "--listen", "unix://" + socket,
                            "--kernel", kernel, "--rootfs", rootfs, "--max-disk-mib", "4096",
                            "--idle-timeout", "0", "--memory-overcommit", "8"},
                           state + ".log");
  Api api(socket);
  g_cleanup.delete_sandboxes = [&api] {
    for (const std::string& id : api.List()) (void)api.Delete(id);
  };

  utsname u;
  ::uname(&u);
  std::printf("host: %s, %u CPUs, %lu MiB; sandboxd + sbx-vmm from %s\n", u.release,
              std::thread::hardware_concurrency(),
              static_cast<unsigned long>(static_cast<uint64_t>(sysconf(_SC_PHYS_PAGES)) *
                                         static_cast<uint64_t>(sysconf(_SC_PAGESIZE)) >> 20),
              build.c_str());
  if (std::getenv("SBX_IN_KVM_VM") != nullptr) {
    std::printf("NOTE: emulated KVM host (QEMU TCG + nested SVM): absolute times are not product "
                "numbers; read the ratios (and the memory rows).\n");
  }
  std::fflush(stdout);

  Clock::time_point t0 = Clock::now();
  sbx::v1::Template tmpl = api.BuildTemplate(memory_mib);
  const double build_ms = MsSince(t0);
  const std::string snapshot = state + "/templates/default/snapshot";
  std::printf("template \"default\": %lu MiB, %u vCPU, %lu MiB disk per sandbox; built (one Linux "
              "boot + snapshot) in %.1f s; snapshot on disk %.1f MiB\n",
              static_cast<unsigned long>(tmpl.memory_mib()), tmpl.vcpus(),
              static_cast<unsigned long>(tmpl.disk_mib()), build_ms / 1000,
              static_cast<double>(DiskBytes(snapshot)) / (1 << 20));
  std::fflush(stdout);

  // Warm-up (page cache, first connections): not timed.
  uint64_t disk_bytes = 0;
  {
    std::string id = api.Create();
    api.Echo(id);
    struct stat st;
    if (::stat((state + "/sandboxes/" + id + "/disk.img").c_str(), &st) != 0) {
      Die("no disk.img in %s/sandboxes/%s", state.c_str(), id.c_str());
    }
    disk_bytes = static_cast<uint64_t>(st.st_size);
    if (grpc::Status s = api.Delete(id); !s.ok()) Die("Delete: %s", s.error_message().c_str());
    DirectRestore(vmm, snapshot, tmpl.rootfs(), disk_bytes, pattern + "/direct");
  }

  std::printf("\n%-52s%10s%10s%10s%10s\n", ("measurement (ms), " + std::to_string(runs) + " runs each").c_str(),
              "median", "p90", "min", "max");
  // 1. Create -> first exec result.
  std::vector<double> total, create, exec;
  for (uint64_t i = 0; i < runs; ++i) {
    t0 = Clock::now();
    std::string id = api.Create();
    const double c = MsSince(t0);
    api.Echo(id);
    const double all = MsSince(t0);
    total.push_back(all);
    create.push_back(c);
    exec.push_back(all - c);
    if (grpc::Status s = api.Delete(id); !s.ok()) Die("Delete: %s", s.error_message().c_str());
  }
  const Stats create_exec = Summarize(total);
  Row("create -> first exec result (Create + Exec echo)", create_exec);
  Row("  Create (returns RUNNING)", Summarize(create));
  Row("  then Exec echo -> Exited", Summarize(exec));

  // 2, 3. Sleep; wake -> first exec result; and exec on a running sandbox.
  std::vector<double> sleeps, wakes, warm;
  {
    std::string id = api.Create();
    api.Echo(id);
    for (uint64_t i = 0; i < runs; ++i) {
      t0 = Clock::now();
      api.Echo(id);
      warm.push_back(MsSince(t0));
    }
    for (uint64_t i = 0; i < runs; ++i) {
      t0 = Clock::now();
      api.Sleep(id);
      sleeps.push_back(MsSince(t0));
      t0 = Clock::now();
      api.Echo(id);
      wakes.push_back(MsSince(t0));
    }
    const sbx::v1::Sandbox s = api.Get(id);
    if (s.wakes() != runs) Die("%s: %lu wakes, expected %lu", id.c_str(), static_cast<unsigned long>(s.wakes()),
                               static_cast<unsigned long>(runs));
    if (grpc::Status st = api.Delete(id); !st.ok()) Die("Delete: %s", st.error_message().c_str());
  }
  const Stats wake = Summarize(wakes);
  Row("wake -> first exec result (Exec echo on SLEEPING)", wake);
  Row("sleep (Sleep call -> SLEEPING)", Summarize(sleeps));
  Row("exec echo -> Exited on a RUNNING sandbox", Summarize(warm));

  // The baseline: the same snapshot restored by a plain sbx-vmm.
  std::vector<double> pings, direct_exec;
  for (uint64_t i = 0; i < runs; ++i) {
    Direct d = DirectRestore(vmm, snapshot, tmpl.rootfs(), disk_bytes, pattern + "/direct");
    pings.push_back(d.ping_ms);
    direct_exec.push_back(d.exec_ms);
  }
  const Stats direct = Summarize(direct_exec);
  Row("direct sbx-vmm --restore -> first agent answer", Summarize(pings));
  Row("  -> AfterRestore -> agent exec echo -> Exited", direct);
  std::printf("create -> first exec result / direct restore -> exec: %.2f (median), sandboxd adds %.1f ms\n"
              "  (gRPC, the sandbox's disk (mkfs.ext4), its cgroup, AttachDisk, state records)\n"
              "wake -> first exec result / direct restore -> exec: %.2f (median)\n",
              create_exec.median / direct.median, create_exec.median - direct.median,
              wake.median / direct.median);
  std::fflush(stdout);

  // 4. Idle sandboxes: host memory while running, disk while sleeping.
  std::vector<std::string> ids;
  for (uint64_t i = 0; i < idle; ++i) {
    ids.push_back(api.Create());
    api.Echo(ids.back());
  }
  std::this_thread::sleep_for(std::chrono::duration<double>(settle_s));
  const std::vector<pid_t> pids = VmmPids(state + "/sandboxes/");
  if (pids.size() != idle) Die("found %zu sbx-vmm processes for %lu sandboxes", pids.size(),
                               static_cast<unsigned long>(idle));
  uint64_t pss = 0, pss_min = UINT64_MAX, pss_max = 0;
  for (pid_t p : pids) {
    uint64_t k = PssKib(p);
    pss += k;
    pss_min = std::min(pss_min, k);
    pss_max = std::max(pss_max, k);
  }
  const uint64_t daemon_pss = PssKib(g_cleanup.daemon);
  const double per = static_cast<double>(pss) / static_cast<double>(idle);
  std::printf("\nidle RUNNING sandboxes: %lu, each after one exec, idle %.0f s\n"
              "  PSS of their sbx-vmm processes: %lu KiB in all, %.0f KiB per sandbox (min %lu, max %lu);"
              " sandboxd itself: %lu KiB\n",
              static_cast<unsigned long>(idle), settle_s, static_cast<unsigned long>(pss), per,
              static_cast<unsigned long>(pss_min), static_cast<unsigned long>(pss_max),
              static_cast<unsigned long>(daemon_pss));
  const double fit = (static_cast<double>(kHostBytes >> 10) - static_cast<double>(daemon_pss)) / per;
  std::printf("  idle running sandboxes in 24 GiB = (24 GiB - sandboxd) / %.0f KiB = %.0f\n"
              "    (EXTRAPOLATED from %lu sandboxes; guest memory a workload touches adds to it;"
              " sandboxd's default admission, --memory-overcommit 1.0, stops at 24 GiB / %lu MiB = %lu:"
              " raise it to hold more)\n",
              per, std::floor(fit), static_cast<unsigned long>(idle),
              static_cast<unsigned long>(memory_mib),
              static_cast<unsigned long>((kHostBytes >> 20) / memory_mib));
  std::fflush(stdout);

  for (const std::string& id : ids) api.Sleep(id);
  const std::vector<pid_t> left = VmmPids(state + "/sandboxes/");
  uint64_t disk = 0, snap = 0;
  for (const std::string& id : ids) {
    const std::string dir = state + "/sandboxes/" + id;
    disk += DiskBytes(dir);
    snap += DiskBytes(dir + "/snapshot");
  }
  const double disk_kib = static_cast<double>(disk >> 10) / static_cast<double>(idle);
  const double snap_kib = static_cast<double>(snap >> 10) / static_cast<double>(idle);
  std::printf("SLEEPING sandboxes: the same %lu slept; sbx-vmm processes left: %zu; sandboxd: %lu KiB\n"
              "  host memory per sleeping sandbox: none (no process; a record in sandboxd)\n"
              "  disk per sleeping sandbox (du of its directory): %.0f KiB (snapshot %.0f KiB,"
              " disk.img + records %.0f KiB)\n"
              "  sleeping sandboxes in 24 GiB: not bounded by memory; by disk: %.0f per 24 GiB of disk,"
              " %.0f per TiB\n",
              static_cast<unsigned long>(idle), left.size(),
              static_cast<unsigned long>(PssKib(g_cleanup.daemon)), disk_kib, snap_kib,
              disk_kib - snap_kib, std::floor(static_cast<double>(kHostBytes >> 10) / disk_kib),
              std::floor(static_cast<double>(uint64_t{1} << 30) / disk_kib));
  std::fflush(stdout);

  for (const std::string& id : ids) {
    if (grpc::Status s = api.Delete(id); !s.ok()) Die("Delete: %s", s.error_message().c_str());
  }
  g_cleanup.delete_sandboxes = nullptr;
  CleanupAll();
  return 0;
}
