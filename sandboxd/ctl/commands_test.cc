// sandboxctl's commands against an in-process gRPC server with a fake of
// the two services (the real daemon is tested in sandboxd/ and tests/):
// what a user sees on stdout and stderr, and the exit status.

#include "sandboxd/ctl/commands.h"

#include <fcntl.h>
#include <unistd.h>

#include <fstream>
#include <functional>
#include <map>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "sandboxd/ctl/args.h"
#include "sandboxd/ctl/fake_services.h"

namespace sbx::ctl {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::SizeIs;
using namespace sbx::v1;
using namespace sbx::ctl::fake;

class Pipe {
 public:
  Pipe() { EXPECT_EQ(pipe2(fds_, O_CLOEXEC), 0); }
  ~Pipe() {
    CloseRead();
    CloseWrite();
  }
  int rd() const { return fds_[0]; }
  void Write(const std::string& s) {
    ASSERT_EQ(write(fds_[1], s.data(), s.size()), static_cast<ssize_t>(s.size()));
  }
  void CloseWrite() {
    if (fds_[1] >= 0) close(fds_[1]);
    fds_[1] = -1;
  }
  void CloseRead() {
    if (fds_[0] >= 0) close(fds_[0]);
    fds_[0] = -1;
  }

 private:
  int fds_[2] = {-1, -1};
};

class CtlTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char dir[] = "/tmp/sandboxctl_test-XXXXXX";
    ASSERT_NE(mkdtemp(dir), nullptr);
    dir_ = dir;
    // A unix socket, not InProcessChannel: gRPC's in-process transport
    // completes a Write only once the peer reads it, unlike a real one.
    const std::string addr = "unix://" + dir_ + "/sandboxd.sock";
    grpc::ServerBuilder builder;
    builder.AddListeningPort(addr, grpc::InsecureServerCredentials());
    builder.RegisterService(&sandboxes_);
    builder.RegisterService(&templates_);
    server_ = builder.BuildAndStart();
    ASSERT_NE(server_, nullptr);
    absl::StatusOr<std::shared_ptr<grpc::Channel>> ch = Connect(addr);
    ASSERT_TRUE(ch.ok());
    channel_ = *ch;
    sb_stub_ = Sandboxes::NewStub(channel_);
    tp_stub_ = Templates::NewStub(channel_);
  }
  void TearDown() override {
    // Hang up first: a server shutting down waits a while for connected
    // clients.
    sb_stub_.reset();
    tp_stub_.reset();
    channel_.reset();
    server_->Shutdown();
    unlink((dir_ + "/sandboxd.sock").c_str());
    std::string cmd = "rm -rf '" + dir_ + "'";
    ASSERT_EQ(system(cmd.c_str()), 0);
  }

  // Runs `sandboxctl ARGS...`: its exit status; what it wrote is in out_
  // and err_.
  int Ctl(std::vector<std::string> args, int in_fd = -1, int interrupt_fd = -1) {
    out_.str("");
    err_.str("");
    Command c;
    absl::StatusOr<Options> o = ParseArgs(
        args, [](const char*) -> const char* { return nullptr; }, &c);
    if (!o.ok()) {
      err_ << "sandboxctl: " << o.status().message() << "\n";
      return kExitUsage;
    }
    Api api;
    api.sandboxes = sb_stub_.get();
    api.templates = tp_stub_.get();
    api.token = o->token;
    api.addr = o->addr;
    api.addr_is_default = !o->addr_explicit;
    api.channel = channel_;
    Io io;
    io.out = &out_;
    io.err = &err_;
    io.in_fd = in_fd;
    io.interrupt_fd = interrupt_fd;
    io.now = [] { return absl::FromUnixSeconds(1714568640 + 3 * 3600); };
    io.tz = absl::UTCTimeZone();
    return RunCommand(*o, api, io);
  }

  // Polls `done` (under the fake's lock) for up to 10 s.
  void WaitUntil(const std::function<bool()>& done) {
    for (int i = 0; i < 1000; ++i) {
      {
        absl::MutexLock lock(&sandboxes_.mu);
        if (done()) return;
      }
      absl::SleepFor(absl::Milliseconds(10));
    }
    ADD_FAILURE() << "timed out waiting";
  }

  std::string NewSandbox() { return sandboxes_.Add(Sandbox()); }

  static ExecEvent Out(const std::string& s) {
    ExecEvent e;
    e.set_stdout(s);
    return e;
  }
  static ExecEvent Err(const std::string& s) {
    ExecEvent e;
    e.set_stderr(s);
    return e;
  }
  static ExecEvent Exit(int code, int sig = 0, bool timed_out = false) {
    ExecEvent e;
    e.mutable_exited()->set_exit_code(code);
    e.mutable_exited()->set_signal(sig);
    e.mutable_exited()->set_timed_out(timed_out);
    return e;
  }
  void Script(std::vector<ExecEvent> events) {
    absl::MutexLock lock(&sandboxes_.mu);
    sandboxes_.script = std::move(events);
  }
  size_t SandboxCount() {
    absl::MutexLock lock(&sandboxes_.mu);
    return sandboxes_.sandboxes.size();
  }

  FakeSandboxes sandboxes_;
  FakeTemplates templates_;
  std::unique_ptr<grpc::Server> server_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<Sandboxes::Stub> sb_stub_;
  std::unique_ptr<Templates::Stub> tp_stub_;
  std::ostringstream out_, err_;
  std::string dir_;
};

TEST_F(CtlTest, RunStreamsOutputExitsWithTheCodeAndDeletesTheSandbox) {
  Script({Out("one\n"), Err("warn\n"), Out("two\n"), Exit(3)});
  EXPECT_EQ(Ctl({"run", "--cpus", "2", "-e", "A=1", "-w", "/tmp", "--timeout",
                 "1m", "--", "script", "arg"}),
            3);
  EXPECT_EQ(out_.str(), "one\ntwo\n");
  EXPECT_EQ(err_.str(), "warn\n");
  EXPECT_EQ(SandboxCount(), 0u);  // deleted
  absl::MutexLock lock(&sandboxes_.mu);
  // sandboxctl closed its side after `exited`, as the daemon expects.
  EXPECT_EQ(sandboxes_.half_closed_execs, 1);
  EXPECT_EQ(sandboxes_.last_create.vcpus(), 2u);
  ASSERT_EQ(sandboxes_.execs.size(), 1u);
  const ExecRequest& req = sandboxes_.execs[0];
  EXPECT_THAT(req.argv(), ElementsAre("script", "arg"));
  EXPECT_EQ(req.env().at("A"), "1");
  EXPECT_EQ(req.cwd(), "/tmp");
  EXPECT_EQ(req.timeout().seconds(), 60);
}

TEST_F(CtlTest, RunBuildsAMissingDefaultTemplateWithProgressFirst) {
  templates_.have_default = false;
  Script({Out("hi\n"), Exit(0)});
  EXPECT_EQ(Ctl({"run", "--", "script"}), 0);
  EXPECT_EQ(out_.str(), "hi\n");
  EXPECT_THAT(err_.str(), HasSubstr("building the default template"));
  EXPECT_THAT(err_.str(), HasSubstr("[12.3s] snapshotting"));
  EXPECT_TRUE(templates_.have_default);
  // Another template name is not built by run.
  templates_.have_default = false;
  err_.str("");
  Script({Exit(0)});
  EXPECT_EQ(Ctl({"run", "--template", "py", "--", "script"}), 0);
  EXPECT_EQ(err_.str(), "");
}

TEST_F(CtlTest, RunExitStatusForSignalAndTimeout) {
  Script({Exit(0, 9)});
  EXPECT_EQ(Ctl({"run", "--", "script"}), 128 + 9);
  Script({Exit(0, 9, /*timed_out=*/true)});
  EXPECT_EQ(Ctl({"run", "--timeout", "1s", "--", "script"}), 124);
  Script({Exit(0)});
  EXPECT_EQ(Ctl({"run", "--", "script"}), 0);
  EXPECT_EQ(SandboxCount(), 0u);
}

TEST_F(CtlTest, RunKeepLeavesTheSandboxAndPrintsItsId) {
  Script({Out("hi\n"), Exit(0)});
  EXPECT_EQ(Ctl({"run", "--keep", "--", "script"}), 0);
  ASSERT_EQ(SandboxCount(), 1u);
  std::string id;
  {
    absl::MutexLock lock(&sandboxes_.mu);
    id = sandboxes_.sandboxes.begin()->first;
  }
  EXPECT_EQ(out_.str(), "hi\n");
  EXPECT_EQ(err_.str(), id + "\n");
}

TEST_F(CtlTest, RunForwardsStdin) {
  Pipe in;
  in.Write("hello from stdin\n");
  in.CloseWrite();
  EXPECT_EQ(Ctl({"run", "--", "cat"}, in.rd()), 0);
  EXPECT_EQ(out_.str(), "hello from stdin\n");
}

TEST_F(CtlTest, FirstInterruptSendsSigintToTheCommand) {
  Pipe interrupts;
  std::thread ctrl_c([&] {
    WaitUntil([&] { return !sandboxes_.execs.empty(); });
    interrupts.Write("i");  // Ctrl-C while it runs
  });
  EXPECT_EQ(Ctl({"run", "--", "wait-signal"}, -1, interrupts.rd()), 130);
  ctrl_c.join();
  EXPECT_EQ(err_.str(), "");
  absl::MutexLock lock(&sandboxes_.mu);
  EXPECT_THAT(sandboxes_.signals, ElementsAre(2));
  EXPECT_TRUE(sandboxes_.sandboxes.empty());
}

TEST_F(CtlTest, SecondInterruptStopsWaitingAndStillDeletes) {
  Pipe interrupts;
  std::thread ctrl_c([&] {
    WaitUntil([&] { return !sandboxes_.execs.empty(); });
    interrupts.Write("i");
    // Once the command got (and ignored) the SIGINT, Ctrl-C again.
    WaitUntil([&] { return !sandboxes_.signals.empty(); });
    interrupts.Write("i");
  });
  EXPECT_EQ(Ctl({"run", "--", "wait-signal", "ignore"}, -1, interrupts.rd()), 130);
  ctrl_c.join();
  {
    absl::MutexLock lock(&sandboxes_.mu);
    EXPECT_THAT(sandboxes_.signals, ElementsAre(2));
  }
  EXPECT_EQ(err_.str(), "sandboxctl: run: interrupted\n");
  EXPECT_EQ(SandboxCount(), 0u);
}

TEST_F(CtlTest, ExecStreamsAndExitsWithTheCode) {
  std::string id = NewSandbox();
  Script({Err("e1"), Out("o1"), Err("e2"), Exit(42)});
  EXPECT_EQ(Ctl({"exec", id, "--", "script"}), 42);
  EXPECT_EQ(out_.str(), "o1");
  EXPECT_EQ(err_.str(), "e1e2");
  EXPECT_EQ(SandboxCount(), 1u);  // exec never deletes
}

TEST_F(CtlTest, ExecBackgroundPrintsTheProcessId) {
  std::string id = NewSandbox();
  EXPECT_EQ(Ctl({"exec", id, "-d", "--", "sleep", "100"}), 0);
  EXPECT_EQ(out_.str(), "7\n");
  absl::MutexLock lock(&sandboxes_.mu);
  ASSERT_EQ(sandboxes_.execs.size(), 1u);
  EXPECT_TRUE(sandboxes_.execs[0].background());
}

TEST_F(CtlTest, NotFoundIsOneLineAndExitOne) {
  EXPECT_EQ(Ctl({"exec", "sb-00000000000000ff", "--", "true"}), 1);
  EXPECT_EQ(out_.str(), "");
  EXPECT_EQ(err_.str(), "sandboxctl: exec sb-00000000000000ff: no sandbox sb-00000000000000ff\n");

  EXPECT_EQ(Ctl({"inspect", "sb-00000000000000ff"}), 1);
  EXPECT_EQ(err_.str(), "sandboxctl: inspect sb-00000000000000ff: no sandbox sb-00000000000000ff\n");
}

TEST_F(CtlTest, CreatePrintsTheIdOrJson) {
  EXPECT_EQ(Ctl({"create", "-t", "py", "-l", "team=ml", "--ttl", "1h",
                 "--idle-timeout", "5m", "--idempotency-key", "k"}),
            0);
  std::string id = out_.str();
  ASSERT_TRUE(absl::EndsWith(id, "\n"));
  id.pop_back();
  EXPECT_TRUE(absl::StartsWith(id, "sb-")) << id;
  {
    absl::MutexLock lock(&sandboxes_.mu);
    EXPECT_EQ(sandboxes_.last_create.template_(), "py");
    EXPECT_EQ(sandboxes_.last_create.ttl().seconds(), 3600);
    EXPECT_EQ(sandboxes_.last_create.idle_timeout().seconds(), 300);
    EXPECT_EQ(sandboxes_.last_create.idempotency_key(), "k");
    EXPECT_EQ(sandboxes_.last_create.labels().at("team"), "ml");
  }

  EXPECT_EQ(Ctl({"create", "--json"}), 0);
  EXPECT_THAT(out_.str(), HasSubstr("\"id\": \"sb-"));
  EXPECT_THAT(out_.str(), HasSubstr("\"state\": \"RUNNING\""));
  EXPECT_TRUE(absl::StartsWith(out_.str(), "{"));
}

TEST_F(CtlTest, TokenGoesAsBearerMetadata) {
  EXPECT_EQ(Ctl({"--token", "s3cret", "create"}), 0);
  absl::MutexLock lock(&sandboxes_.mu);
  EXPECT_THAT(sandboxes_.tokens, ElementsAre("Bearer s3cret"));
}

TEST_F(CtlTest, ListFollowsPageTokens) {
  for (int i = 0; i < 5; ++i) {
    Sandbox sb;
    sb.set_template_("default");
    sb.set_vcpus(2);
    sb.set_memory_mib(i == 4 ? 2048 : 512);
    sb.mutable_created_at()->set_seconds(1714568640);  // 3h before io.now
    if (i == 1) (*sb.mutable_labels())["team"] = "ml";
    sandboxes_.Add(sb);
  }
  EXPECT_EQ(Ctl({"list"}), 0);
  std::vector<std::string> lines = absl::StrSplit(out_.str(), '\n', absl::SkipEmpty());
  ASSERT_THAT(lines, SizeIs(6)) << out_.str();
  EXPECT_EQ(lines[0], "ID                   TEMPLATE  STATE    CPUS  MEMORY  AGE  LABELS");
  EXPECT_EQ(lines[1], "sb-0000000000000001  default   running     2    512M  3h");
  EXPECT_EQ(lines[2], "sb-0000000000000002  default   running     2    512M  3h   team=ml");
  EXPECT_EQ(lines[5], "sb-0000000000000005  default   running     2      2G  3h");
  {
    absl::MutexLock lock(&sandboxes_.mu);
    EXPECT_EQ(sandboxes_.list_calls, 3);
  }

  EXPECT_EQ(Ctl({"ps", "-l", "team=ml"}), 0);
  EXPECT_THAT(std::vector<std::string>(absl::StrSplit(out_.str(), '\n', absl::SkipEmpty())),
              SizeIs(2));

  EXPECT_EQ(Ctl({"list", "--json"}), 0);
  std::string json = out_.str();
  size_t ids = 0;
  for (size_t p = json.find("\"id\""); p != std::string::npos; p = json.find("\"id\"", p + 1)) ++ids;
  EXPECT_EQ(ids, 5u);
}

TEST_F(CtlTest, SleepAndRm) {
  std::string a = NewSandbox(), b = NewSandbox();
  EXPECT_EQ(Ctl({"sleep", a}), 0);
  EXPECT_EQ(out_.str(), a + "\n");
  EXPECT_EQ(Ctl({"inspect", a}), 0);
  EXPECT_THAT(out_.str(), HasSubstr("\"state\": \"SLEEPING\""));
  // One missing id: the others are still deleted; exit 1.
  EXPECT_EQ(Ctl({"rm", a, "sb-00000000000000ff", b}), 1);
  EXPECT_EQ(out_.str(), a + "\n" + b + "\n");
  EXPECT_EQ(err_.str(), "sandboxctl: rm sb-00000000000000ff: no sandbox sb-00000000000000ff\n");
  EXPECT_EQ(SandboxCount(), 0u);
}

TEST_F(CtlTest, SetTimeoutsChangesOnlyWhatIsGiven) {
  std::string a = NewSandbox();
  EXPECT_EQ(Ctl({"set-timeouts", a, "--idle-timeout", "90s"}), 0);
  EXPECT_EQ(out_.str(), a + "\n");
  EXPECT_EQ(Ctl({"--json", "set-timeouts", a, "--ttl", "1h"}), 0);
  EXPECT_THAT(out_.str(), HasSubstr("\"idle_timeout\": \"90s\""));
  EXPECT_THAT(out_.str(), HasSubstr("\"ttl\": \"3600s\""));
  EXPECT_EQ(Ctl({"set-timeouts", a}), 2);
  EXPECT_THAT(err_.str(), HasSubstr("--idle-timeout D, --ttl D or both"));
  EXPECT_EQ(Ctl({"set-timeouts", "sb-00000000000000ff", "--ttl", "1m"}), 1);
}

std::string ReadHostFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

TEST_F(CtlTest, CpRoundTripsABigFileByteExactInChunks) {
  std::string id = NewSandbox();
  std::string data(3 * 1024 * 1024 + 12345, '\0');
  std::mt19937 rng(7);
  for (char& c : data) c = static_cast<char>(rng());
  const std::string src = dir_ + "/big.bin";
  {
    std::ofstream f(src, std::ios::binary);
    f.write(data.data(), static_cast<std::streamsize>(data.size()));
  }
  chmod(src.c_str(), 0750);

  EXPECT_EQ(Ctl({"cp", src, id + ":/root/big.bin"}), 0) << err_.str();
  {
    absl::MutexLock lock(&sandboxes_.mu);
    ASSERT_EQ(sandboxes_.files.count(Key(id, "/root/big.bin")), 1u);
    EXPECT_TRUE(sandboxes_.files[Key(id, "/root/big.bin")].data == data);
    EXPECT_EQ(sandboxes_.files[Key(id, "/root/big.bin")].mode, 0750u);
    EXPECT_EQ(sandboxes_.max_write_chunk, kChunk);
  }

  const std::string back = dir_ + "/back.bin";
  EXPECT_EQ(Ctl({"cp", id + ":/root/big.bin", back}), 0) << err_.str();
  EXPECT_TRUE(ReadHostFile(back) == data);
  struct stat st;
  ASSERT_EQ(stat(back.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0750u);
  EXPECT_EQ(err_.str(), "");  // no progress line: stderr is not a terminal

  // Into a directory: the source's name is kept, both ways.
  EXPECT_EQ(Ctl({"cp", back, id + ":/root"}), 0) << err_.str();
  EXPECT_EQ(Ctl({"cp", id + ":/root/back.bin", dir_ + "/"}), 0) << err_.str();
  {
    absl::MutexLock lock(&sandboxes_.mu);
    EXPECT_EQ(sandboxes_.files.count(Key(id, "/root/back.bin")), 1u);
  }
}

TEST_F(CtlTest, CpStdinAndStdout) {
  std::string id = NewSandbox();
  Pipe in;
  in.Write("piped text");
  in.CloseWrite();
  EXPECT_EQ(Ctl({"cp", "-", id + ":/tmp/t.txt"}, in.rd()), 0) << err_.str();
  EXPECT_EQ(Ctl({"cp", id + ":/tmp/t.txt", "-"}), 0);
  EXPECT_EQ(out_.str(), "piped text");
  EXPECT_EQ(Ctl({"cat", id, "/tmp/t.txt"}), 0);
  EXPECT_EQ(out_.str(), "piped text");
}

TEST_F(CtlTest, CpErrors) {
  std::string id = NewSandbox();
  EXPECT_EQ(Ctl({"cp", "a", "b"}), 2);
  EXPECT_THAT(err_.str(), HasSubstr("neither side is in a sandbox"));
  EXPECT_EQ(Ctl({"cp", id + ":/a", id + ":/b"}), 2);
  EXPECT_EQ(Ctl({"cp", dir_ + "/missing", id + ":/a"}), 1);
  EXPECT_THAT(err_.str(), HasSubstr("No such file or directory"));
  // A failed download leaves nothing behind on the host.
  EXPECT_EQ(Ctl({"cp", id + ":/nope", dir_ + "/out"}), 1);
  EXPECT_EQ(err_.str(), "sandboxctl: cp " + id + ":/nope " + dir_ + "/out: /nope: no such file\n");
  EXPECT_EQ(system(("test -z \"$(ls -A '" + dir_ + "' | grep -v sandboxd.sock)\"").c_str()), 0);
}

TEST_F(CtlTest, LsStatRmfile) {
  std::string id = NewSandbox();
  {
    absl::MutexLock lock(&sandboxes_.mu);
    sandboxes_.files[Key(id, "/root/a.py")] = {"print(1)\n", 0644};
    sandboxes_.files[Key(id, "/root/run.sh")] = {std::string(1234, 'x'), 0755};
  }
  EXPECT_EQ(Ctl({"ls", id, "/root"}), 0);
  EXPECT_EQ(out_.str(),
            "-rw-r--r--     9  2024-05-01 13:04  a.py\n"
            "-rwxr-xr-x  1234  2024-05-01 13:04  run.sh\n");
  EXPECT_EQ(Ctl({"stat", id, "/root/run.sh"}), 0);
  EXPECT_THAT(out_.str(), HasSubstr("size:      1234"));
  EXPECT_THAT(out_.str(), HasSubstr("mode:      -rwxr-xr-x (0755)"));
  EXPECT_EQ(Ctl({"rmfile", id, "/root/a.py"}), 0);
  EXPECT_EQ(Ctl({"rmfile", id, "/root/a.py"}), 1);
  EXPECT_EQ(err_.str(), "sandboxctl: rmfile " + id + ":/root/a.py: /root/a.py: no such file\n");
}

TEST_F(CtlTest, TemplateBuildShowsProgressThenTheTemplate) {
  EXPECT_EQ(Ctl({"template", "build", "py"}), 0);
  EXPECT_EQ(err_.str(), "[0.1s] booting\n[12.3s] snapshotting\n");
  EXPECT_EQ(out_.str(),
            "NAME  STATE  CPUS  MEMORY  DISK  SANDBOXES  AGE\n"
            "py    ready  1     512M    1G    0          -\n");
  EXPECT_EQ(Ctl({"template", "build", "broken"}), 1);
  EXPECT_THAT(err_.str(), HasSubstr("sandboxctl: template build broken: the agent never answered\n"));
}

TEST_F(CtlTest, TemplateLsAndRm) {
  EXPECT_EQ(Ctl({"template", "ls"}), 0);
  EXPECT_EQ(out_.str(),
            "NAME     STATE  CPUS  MEMORY  DISK  SANDBOXES  AGE\n"
            "default  ready     2    512M    2G          3  -\n");
  EXPECT_EQ(Ctl({"template", "rm", "default"}), 1);
  EXPECT_EQ(err_.str(), "sandboxctl: template rm default: template default is used by 3 sandboxes\n");
}

TEST_F(CtlTest, NoDaemonAtTheDefaultAddressSaysHowToStartOne) {
  absl::StatusOr<std::shared_ptr<grpc::Channel>> ch =
      Connect("unix://" + dir_ + "/nothing.sock");
  ASSERT_TRUE(ch.ok());
  auto stub = Sandboxes::NewStub(*ch);
  Api api;
  api.sandboxes = stub.get();
  api.addr = kDefaultAddr;
  api.addr_is_default = true;
  api.channel = *ch;
  Io io;
  io.out = &out_;
  io.err = &err_;
  Options o;
  o.command = Command::kList;
  EXPECT_EQ(RunCommand(o, api, io), 1);
  EXPECT_EQ(err_.str(),
            "sandboxctl: list: no sandboxd at unix:///run/sbx/sandboxd.sock: start "
            "it with `sandboxd`, or use `sandboxctl run`, which starts one\n");

  // An address given explicitly: the connection error itself.
  err_.str("");
  api.addr = "unix://" + dir_ + "/nothing.sock";
  api.addr_is_default = false;
  EXPECT_EQ(RunCommand(o, api, io), 1);
  EXPECT_THAT(err_.str(), HasSubstr("sandboxctl: list: no sandboxd at unix://" + dir_));
}

TEST(ConnectTest, Addresses) {
  EXPECT_TRUE(Connect("unix:///run/sbx/sandboxd.sock").ok());
  EXPECT_TRUE(Connect("tcp://127.0.0.1:7000").ok());
  EXPECT_FALSE(Connect("http://x").ok());
}

}  // namespace
}  // namespace sbx::ctl
