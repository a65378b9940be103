// End to end: the sandboxd binary with real sbx-vmm VMs (Linux kernel,
// Debian rootfs), driven over gRPC and through the sandboxctl binary.
// One template boot, then restores:
//   sandboxctl run -- python3 (output, exit code, sandbox deleted after)
//   create two sandboxes; a file in one is not in the other
//   a background counter in memory; sleep; kill -9 sandboxd; start it;
//   the sleeping sandbox wakes on the next request with its file and the
//   counter going on from where it was; the running one was adopted
//   the disk quota (ENOSPC inside the guest), vCPU bound refusal
//   a guest that reboots its kernel: sandboxd and the neighbour carry on,
//   the sandbox comes back from its template with its files
//   idle auto-sleep
//   delete leaves nothing in the state directory
//   sandboxctl run with no daemon listening starts an embedded one
// Needs /dev/kvm and the built images (label e2e).
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "base/test_facility.h"
#include "gmock/gmock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "sbx/v1/sandbox.grpc.pb.h"

extern char** environ;

namespace sbx::e2e {
namespace {

using ::testing::HasSubstr;
namespace fs = std::filesystem;

// A progress line, flushed at once: where a hung test stopped.
void Step(const std::string& what) {
  std::printf("[ step ] %s\n", what.c_str());
  std::fflush(stdout);
}

std::string BuildDir() {
  return fs::read_symlink("/proc/self/exe").parent_path().parent_path().string();
}

// Runs argv, returns its exit status; stdout/stderr to files.
struct Ran {
  int status = -1;
  std::string out, err;
};
Ran RunProgram(const std::vector<std::string>& args, const std::string& work) {
  const std::string out = work + "/prog.out", err = work + "/prog.err";
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&fa, 1, out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
  posix_spawn_file_actions_addopen(&fa, 2, err.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
  std::vector<char*> argv;
  for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  pid_t pid;
  Ran r;
  if (posix_spawn(&pid, argv[0], &fa, nullptr, argv.data(), environ) == 0) {
    int status;
    waitpid(pid, &status, 0);
    r.status = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  }
  posix_spawn_file_actions_destroy(&fa);
  r.out = testing::ReadFileToString(out);
  r.err = testing::ReadFileToString(err);
  return r;
}

class Daemon {
 public:
  Daemon(std::string state, std::string socket) : state_(std::move(state)), socket_(std::move(socket)) {}
  ~Daemon() { Stop(SIGKILL); }

  void Start() {
    const std::string bin = BuildDir() + "/sandboxd/sandboxd";
    const std::string cache = testing::ImageCacheDir();
    std::vector<std::string> args = {bin,
                                     "--state-dir", state_,
                                     "--listen", "unix://" + socket_,
                                     "--kernel", cache + "/kernel/current/vmlinux",
                                     "--rootfs", cache + "/rootfs/current/rootfs.ext4",
                                     "--max-disk-mib", "4096"};
    const std::string log = state_ + ".log";
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 1, log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0600);
    posix_spawn_file_actions_adddup2(&fa, 1, 2);
    std::vector<char*> argv;
    for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    ASSERT_EQ(posix_spawn(&pid_, bin.c_str(), &fa, nullptr, argv.data(), environ), 0);
    posix_spawn_file_actions_destroy(&fa);
    channel_ = grpc::CreateChannel("unix:" + socket_, grpc::InsecureChannelCredentials());
    ASSERT_TRUE(channel_->WaitForConnected(std::chrono::system_clock::now() +
                                           std::chrono::seconds(60)))
        << "sandboxd did not listen; its log:\n" << Log();
    sandboxes = sbx::v1::Sandboxes::NewStub(channel_);
    templates = sbx::v1::Templates::NewStub(channel_);
  }

  // Ends the daemon with `sig`; returns its exit status.
  int Stop(int sig) {
    sandboxes.reset();
    templates.reset();
    channel_.reset();
    if (pid_ <= 0) return -1;
    ::kill(pid_, sig);
    int status = 0;
    ::waitpid(pid_, &status, 0);
    pid_ = 0;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  }

  std::string Log() const { return testing::ReadFileToString(state_ + ".log"); }
  // Whether the daemon still runs (not reaped: it is our child).
  bool Running() const {
    int status = 0;
    return pid_ > 0 && ::waitpid(pid_, &status, WNOHANG) == 0;
  }

  std::unique_ptr<sbx::v1::Sandboxes::Stub> sandboxes;
  std::unique_ptr<sbx::v1::Templates::Stub> templates;

 private:
  std::string state_, socket_;
  pid_t pid_ = 0;
  std::shared_ptr<grpc::Channel> channel_;
};

std::unique_ptr<grpc::ClientContext> Ctx(int seconds = 300) {
  auto ctx = std::make_unique<grpc::ClientContext>();
  ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(seconds));
  return ctx;
}

struct ExecResult {
  grpc::Status status;
  std::string out, err;
  int exit_code = -1;
};

ExecResult Exec(Daemon& d, const std::string& id, const std::string& shell,
                bool background = false) {
  sbx::v1::ExecRequest r;
  r.set_sandbox_id(id);
  r.set_shell(shell);
  r.set_background(background);
  auto ctx = Ctx();
  auto reader = d.sandboxes->Exec(ctx.get(), r);
  sbx::v1::ExecEvent e;
  ExecResult result;
  while (reader->Read(&e)) {
    result.out += e.stdout();
    result.err += e.stderr();
    if (e.has_exited()) result.exit_code = e.exited().exit_code() + 128 * (e.exited().signal() != 0);
  }
  result.status = reader->Finish();
  return result;
}

sbx::v1::Sandbox Get(Daemon& d, const std::string& id, grpc::Status* status = nullptr) {
  sbx::v1::GetSandboxRequest r;
  r.set_id(id);
  sbx::v1::Sandbox s;
  auto ctx = Ctx();
  grpc::Status st = d.sandboxes->Get(ctx.get(), r, &s);
  if (status != nullptr) *status = st;
  return s;
}

uint64_t Counter(Daemon& d, const std::string& id) {
  ExecResult r = Exec(d, id, "cat /tmp/counter 2>/dev/null || echo 0");
  uint64_t n = 0;
  (void)absl::SimpleAtoi(absl::StripAsciiWhitespace(r.out), &n);
  return n;
}

// The sbx-vmm processes whose command line names `dir`, each with the
// lines of /proc/PID/status that say how it is confined.
struct VmmProcess {
  pid_t pid = 0;
  std::string uid, cap_eff, cap_bnd, no_new_privs, seccomp;
};
std::vector<VmmProcess> VmmsOf(const std::string& dir) {
  std::vector<VmmProcess> out;
  for (const auto& e : std::filesystem::directory_iterator("/proc")) {
    int pid = 0;
    if (!absl::SimpleAtoi(e.path().filename().string(), &pid)) continue;
    const std::string cmdline = testing::ReadFileToString(e.path().string() + "/cmdline");
    if (cmdline.find("sbx-vmm") == std::string::npos || cmdline.find(dir) == std::string::npos) {
      continue;
    }
    VmmProcess p;
    p.pid = pid;
    std::istringstream status(testing::ReadFileToString(e.path().string() + "/status"));
    for (std::string line; std::getline(status, line);) {
      auto field = [&](const char* key, std::string* v) {
        if (line.starts_with(key)) *v = std::string(absl::StripAsciiWhitespace(line.substr(strlen(key))));
      };
      field("Uid:", &p.uid);
      field("CapEff:", &p.cap_eff);
      field("CapBnd:", &p.cap_bnd);
      field("NoNewPrivs:", &p.no_new_privs);
      field("Seccomp:", &p.seccomp);
    }
    out.push_back(p);
  }
  return out;
}

// sandboxd's default, as root: every VMM jailed, each with a uid of its own.
void ExpectJailed(const std::string& dir, size_t count) {
  std::vector<VmmProcess> vmms = VmmsOf(dir);
  EXPECT_EQ(vmms.size(), count);
  std::set<std::string> uids;
  for (const VmmProcess& p : vmms) {
    EXPECT_FALSE(p.uid.starts_with("0\t")) << "sbx-vmm " << p.pid << " runs as root";
    EXPECT_EQ(p.cap_eff, "0000000000000000") << p.pid;
    EXPECT_EQ(p.cap_bnd, "0000000000000000") << p.pid;
    EXPECT_EQ(p.no_new_privs, "1") << p.pid;
    EXPECT_EQ(p.seccomp, "2") << p.pid;
    uids.insert(p.uid);
  }
  EXPECT_EQ(uids.size(), vmms.size()) << "two VMMs share a uid";
}

TEST(SandboxdTest, SandboxesRunSleepSurviveADaemonKillAndKeepTheirFiles) {
  SBX_REQUIRE(testing::CheckKvm());
  SBX_REQUIRE(testing::CheckImage("kernel/current/vmlinux"));
  SBX_REQUIRE(testing::CheckImage("rootfs/current/rootfs.ext4"));
  const std::string work = absl::StrCat("/tmp/sbxe2e", ::getpid());
  fs::remove_all(work);
  fs::create_directories(work);
  const std::string state = work + "/state";
  const std::string socket = work + "/sd.sock";
  Daemon d(state, socket);
  Step("start sandboxd");
  ASSERT_NO_FATAL_FAILURE(d.Start());

  Step("build the default template (the only boot)");
  {
    sbx::v1::CreateTemplateRequest r;
    r.set_name("default");
    r.set_memory_mib(256);
    r.set_disk_mib(64);
    auto ctx = Ctx(600);
    auto reader = d.templates->Create(ctx.get(), r);
    sbx::v1::TemplateProgress p;
    bool ready = false;
    while (reader->Read(&p)) {
      std::printf("  [%5.1fs] %s\n", p.elapsed_seconds(), p.step().c_str());
      ready |= p.has_template_() && p.template_().state() == sbx::v1::READY;
    }
    grpc::Status st = reader->Finish();
    ASSERT_TRUE(st.ok()) << st.error_message() << "\nsandboxd log:\n" << d.Log();
    ASSERT_TRUE(ready);
  }

  Step("sandboxctl run -- python3");
  {
    const std::string ctl = BuildDir() + "/sandboxd/sandboxctl";
    Ran r = RunProgram({ctl, "--addr", "unix://" + socket, "run", "--", "python3", "-c",
                        "import sys; print(6*7); sys.exit(3)"},
                       work);
    EXPECT_EQ(r.status, 3) << r.err;
    EXPECT_EQ(r.out, "42\n") << r.err;
    sbx::v1::ListSandboxesResponse list;
    auto ctx = Ctx();
    ASSERT_TRUE(d.sandboxes->List(ctx.get(), {}, &list).ok());
    EXPECT_EQ(list.sandboxes_size(), 0) << "run deletes its sandbox";
  }

  Step("create two sandboxes");
  std::string a, b;
  for (std::string* id : {&a, &b}) {
    sbx::v1::CreateSandboxRequest r;
    r.set_disk_mib(64);
    r.mutable_idle_timeout()->set_seconds(3600);
    sbx::v1::Sandbox s;
    auto ctx = Ctx();
    grpc::Status st = d.sandboxes->Create(ctx.get(), r, &s);
    ASSERT_TRUE(st.ok()) << st.error_message() << "\nsandboxd log:\n" << d.Log();
    EXPECT_EQ(s.state(), sbx::v1::RUNNING);
    *id = s.id();
  }

  if (::geteuid() == 0) {
    Step("both VMMs are jailed, each as its own uid");
    ExpectJailed(work, 2);
  }

  Step("a file in one sandbox is not in the other");
  ExecResult w = Exec(d, a, "echo kept > /root/note.txt && sync && cat /root/note.txt");
  ASSERT_TRUE(w.status.ok()) << w.status.error_message();
  EXPECT_EQ(w.out, "kept\n");
  EXPECT_EQ(Exec(d, b, "cat /root/note.txt").exit_code, 1);

  Step("the disk quota: ENOSPC inside the guest, the sandbox goes on");
  // Filled with fallocate but for 1 MiB, which dd then overflows: writing
  // all ~55 MiB took 6 minutes on a PVM host (guest kernel code emulated),
  // past the call's deadline.
  ExecResult full = Exec(d, a,
                         "avail=$(df -k --output=avail /root | tail -n 1); "
                         "fallocate -l $((avail - 1024))K /root/fill && "
                         "dd if=/dev/zero of=/root/big bs=1M count=8 2>&1; "
                         "rm -f /root/fill /root/big");
  EXPECT_THAT(full.out, HasSubstr("No space left on device"))
      << "exit " << full.exit_code << ", " << full.status.error_message() << ": "
      << full.err << "\nsandboxd log:\n" << d.Log();
  ExecResult after = Exec(d, a, "echo still here");
  EXPECT_EQ(after.out, "still here\n") << after.status.error_message() << ": " << after.err;

  Step("a background counter in memory");
  ASSERT_TRUE(Exec(d, a, "i=0; while :; do i=$((i+1)); echo $i > /tmp/counter; sleep 1; done",
                   /*background=*/true)
                  .status.ok());
  uint64_t before = 0;
  for (int i = 0; i < 120 && before < 2; ++i) {
    std::this_thread::sleep_for(std::chrono::seconds(1));
    before = Counter(d, a);
  }
  ASSERT_GE(before, 2u);

  Step("sleep");
  {
    sbx::v1::SleepRequest r;
    r.set_id(a);
    sbx::v1::Sandbox s;
    auto ctx = Ctx();
    grpc::Status st = d.sandboxes->Sleep(ctx.get(), r, &s);
    ASSERT_TRUE(st.ok()) << st.error_message() << "\nsandboxd log:\n" << d.Log();
    EXPECT_EQ(s.state(), sbx::v1::SLEEPING);
  }

  Step("kill -9 sandboxd, start it again");
  EXPECT_EQ(d.Stop(SIGKILL), 128 + SIGKILL);
  ASSERT_NO_FATAL_FAILURE(d.Start());
  EXPECT_EQ(Get(d, a).state(), sbx::v1::SLEEPING);
  EXPECT_EQ(Get(d, b).state(), sbx::v1::RUNNING) << "the running VM is adopted";
  EXPECT_EQ(Exec(d, b, "echo adopted").out, "adopted\n");

  Step("the next request wakes it: the file and the counter are there");
  ExecResult r = Exec(d, a, "cat /root/note.txt");
  ASSERT_TRUE(r.status.ok()) << r.status.error_message() << "\nsandboxd log:\n" << d.Log();
  EXPECT_EQ(r.out, "kept\n");
  EXPECT_EQ(Get(d, a).wakes(), 1u);
  if (::geteuid() == 0) ExpectJailed(work, 2);  // one woken, one adopted
  const uint64_t after_wake = Counter(d, a);
  EXPECT_GE(after_wake, before);
  EXPECT_LT(after_wake, before + 60) << "the counter started over";
  uint64_t later = after_wake;
  for (int i = 0; i < 60 && later <= after_wake; ++i) {
    std::this_thread::sleep_for(std::chrono::seconds(1));
    later = Counter(d, a);
  }
  EXPECT_GT(later, after_wake) << "the counter stopped";

  Step("bounds: too many vCPUs is refused");
  {
    sbx::v1::CreateSandboxRequest c;
    c.set_vcpus(1000);
    sbx::v1::Sandbox s;
    auto ctx = Ctx();
    EXPECT_EQ(d.sandboxes->Create(ctx.get(), c, &s).error_code(),
              grpc::StatusCode::RESOURCE_EXHAUSTED);
  }

  Step("a guest that reboots its kernel: sandboxd stays up, the neighbour runs on, "
       "the sandbox comes back with its files");
  {
    ExecResult w = Exec(d, b, "echo kept-b > /root/b.txt && sync && echo ok");
    ASSERT_EQ(w.out, "ok\n") << w.err;
    // reboot(2) as root in the guest: the guest kernel resets the machine
    // and its sbx-vmm exits under sandboxd's feet.
    Exec(d, b, "sleep 1; python3 -c 'import ctypes; ctypes.CDLL(None).reboot(0x01234567)'",
         /*background=*/true);
    sbx::v1::SandboxState state = sbx::v1::RUNNING;
    for (int i = 0; i < 120 && state == sbx::v1::RUNNING; ++i) {
      std::this_thread::sleep_for(std::chrono::seconds(1));
      state = Get(d, b).state();
    }
    EXPECT_EQ(state, sbx::v1::SLEEPING) << "sandboxd did not notice its VMM end\n" << d.Log();
    EXPECT_TRUE(d.Running()) << d.Log();
    EXPECT_THAT(d.Log(), HasSubstr("its VMM ended unexpectedly"));
    EXPECT_EQ(Exec(d, a, "echo neighbour").out, "neighbour\n");
    ExecResult back = Exec(d, b, "cat /root/b.txt");
    ASSERT_TRUE(back.status.ok()) << back.status.error_message() << "\n" << d.Log();
    EXPECT_EQ(back.out, "kept-b\n");
  }

  Step("idle auto-sleep");
  {
    sbx::v1::SetTimeoutsRequest t;
    t.set_id(b);
    t.mutable_idle_timeout()->set_seconds(2);
    sbx::v1::Sandbox s;
    auto ctx = Ctx();
    ASSERT_TRUE(d.sandboxes->SetTimeouts(ctx.get(), t, &s).ok());
    sbx::v1::SandboxState state = sbx::v1::RUNNING;
    for (int i = 0; i < 120 && state != sbx::v1::SLEEPING; ++i) {
      std::this_thread::sleep_for(std::chrono::seconds(1));
      state = Get(d, b).state();
    }
    EXPECT_EQ(state, sbx::v1::SLEEPING) << d.Log();
  }

  Step("delete both: nothing left");
  for (const std::string& id : {a, b}) {
    sbx::v1::DeleteSandboxRequest del;
    del.set_id(id);
    sbx::v1::DeleteSandboxResponse out;
    auto ctx = Ctx();
    EXPECT_TRUE(d.sandboxes->Delete(ctx.get(), del, &out).ok());
    grpc::Status st;
    Get(d, id, &st);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::NOT_FOUND);
  }
  EXPECT_TRUE(fs::is_empty(state + "/sandboxes"));
  EXPECT_EQ(d.Stop(SIGTERM), 0);

  Step("sandboxctl run with no daemon listening: an embedded one");
  {
    ::setenv("SBX_STATE_DIR", state.c_str(), 1);
    ::unsetenv("SBX_ADDR");
    Ran r = RunProgram({BuildDir() + "/sandboxd/sandboxctl", "run", "--", "sh", "-c",
                        "echo embedded"},
                       work);
    EXPECT_EQ(r.status, 0) << r.err;
    EXPECT_EQ(r.out, "embedded\n") << r.err;
    EXPECT_THAT(r.err, HasSubstr("starting sandboxd"));
  }
  fs::remove_all(work);
}

}  // namespace
}  // namespace sbx::e2e
