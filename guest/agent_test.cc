// The agent served in-process over a unix socket, driven by the real
// client: the same code that serves vsock in a guest.

#include "guest/agent.h"

#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "base/status.h"
#include "base/test_facility.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "guest/client.h"
#include "guest/frame.h"

namespace sbx::agent {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

class FakeSystem final : public System {
 public:
  absl::Status AddEntropy(std::string_view bytes) override {
    entropy = std::string(bytes);
    return absl::OkStatus();
  }
  absl::Status SetClock(int64_t unix_time_ns) override {
    clock_ns = unix_time_ns;
    return absl::OkStatus();
  }
  absl::Status Sync() override {
    ++syncs;
    return absl::OkStatus();
  }
  absl::Status Reboot() override {
    ++reboots;
    return absl::OkStatus();
  }
  // Records the device; runs `attach_program` through the agent's runner
  // (when set) and keeps its result.
  absl::Status AttachDisk(const std::string& device,
                          const ProgramRunner& run) override {
    attached.push_back(device);
    if (!attach_program.empty()) {
      absl::StatusOr<ProgramResult> result = run(attach_program);
      if (!result.ok()) return result.status();
      program_result = *result;
    }
    return attach_status;
  }
  std::vector<std::string> attached;
  std::vector<std::string> attach_program;
  ProgramResult program_result;
  absl::Status attach_status;
  std::string entropy;
  int64_t clock_ns = 0;
  int syncs = 0;
  int reboots = 0;
};

// True once `pid` is gone (reaped, not merely a zombie), waiting up to 10 s.
bool ProcessGone(pid_t pid) {
  for (int i = 0; i < 1000; ++i) {
    if (kill(pid, 0) != 0 && errno == ESRCH) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return false;
}

class AgentTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string pattern = ::testing::TempDir() + "agent_test_XXXXXX";
    ASSERT_NE(mkdtemp(pattern.data()), nullptr);
    dir_ = pattern;
    socket_path_ = dir_ + "/agent.sock";
    absl::StatusOr<std::unique_ptr<Agent>> agent = Agent::Create(Options());
    ASSERT_TRUE(agent.ok()) << agent.status();
    agent_ = std::move(*agent);
    absl::StatusOr<UniqueFd> listener = ListenUnix(socket_path_);
    ASSERT_TRUE(listener.ok()) << listener.status();
    listener_ = std::move(*listener);
    server_ = std::thread([this] { served_ = agent_->Serve(listener_.get()); });
    client_ = std::make_unique<Client>(NewUnixDialer(socket_path_));
  }

  void TearDown() override {
    if (agent_) agent_->Stop();
    if (server_.joinable()) server_.join();
    EXPECT_TRUE(served_.ok()) << served_;
    agent_.reset();
    std::filesystem::remove_all(dir_);
  }

  virtual AgentOptions Options() {
    return {.pid1 = false, .system = &system_};
  }

  // A raw connection, for what the client would never send.
  UniqueFd RawConnection() {
    absl::StatusOr<UniqueFd> fd = NewUnixDialer(socket_path_)->Dial();
    EXPECT_TRUE(fd.ok()) << fd.status();
    return fd.ok() ? std::move(*fd) : UniqueFd();
  }

  Exec Shell(const std::string& script) {
    Exec exec;
    exec.set_shell(script);
    exec.set_close_stdin(true);
    return exec;
  }

  FakeSystem system_;
  std::string dir_;
  std::string socket_path_;
  std::unique_ptr<Agent> agent_;
  UniqueFd listener_;
  std::thread server_;
  absl::Status served_;
  std::unique_ptr<Client> client_;
};

TEST_F(AgentTest, PingReportsVersionAndMode) {
  absl::StatusOr<Pong> pong = client_->Ping();
  ASSERT_TRUE(pong.ok()) << pong.status();
  EXPECT_EQ(pong->agent_version(), kAgentVersion);
  EXPECT_FALSE(pong->pid1());
}

TEST_F(AgentTest, PythonPrintsFortyTwo) {
  absl::StatusOr<ExecResult> result =
      client_->Run({"python3", "-c", "print(6*7)"});
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->stdout_data, "42\n");
  EXPECT_EQ(result->stderr_data, "");
  EXPECT_EQ(result->exited.exit_code(), 0);
  EXPECT_FALSE(result->exited.has_signal());
}

TEST_F(AgentTest, ExitCodeIsReported) {
  absl::StatusOr<ExecResult> result = client_->Run(Shell("exit 3"));
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_TRUE(result->exited.has_exit_code());
  EXPECT_EQ(result->exited.exit_code(), 3);
}

TEST_F(AgentTest, KillingSignalIsReported) {
  absl::StatusOr<ExecResult> result = client_->Run(Shell("kill -KILL $$"));
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_TRUE(result->exited.has_signal());
  EXPECT_EQ(result->exited.signal(), SIGKILL);
  EXPECT_FALSE(result->exited.timed_out());
}

TEST_F(AgentTest, EnvCwdAndArgvArePassed) {
  Exec exec = Shell("printf '%s|%s|%s' \"$GREETING\" \"$(pwd)\" \"$HOME\"");
  (*exec.mutable_env())["GREETING"] = "hello world";
  exec.set_cwd(dir_);
  absl::StatusOr<ExecResult> result = client_->Run(exec);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->stdout_data, "hello world|" + dir_ + "|/root");
}

TEST_F(AgentTest, RunsAsTheRequestedUser) {
  testing::FacilityCheck root;
  root.available = getuid() == 0;
  root.reason = "changing a process's uid needs root";
  SBX_REQUIRE(root);
  Exec exec = Shell("id -u; id -g; id -G");
  exec.set_uid(65534);
  exec.set_gid(65534);
  absl::StatusOr<ExecResult> result = client_->Run(exec);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->stdout_data, "65534\n65534\n65534\n");
  // The agent itself keeps its own credentials.
  EXPECT_EQ(getuid(), 0u);
}

TEST_F(AgentTest, TimeoutKillsTheWholeProcessTree) {
  // The shell starts a grandchild and waits; the timeout must take both.
  Exec exec = Shell("sleep 1000 & echo $!; wait");
  exec.set_timeout_ms(300);
  auto started = std::chrono::steady_clock::now();
  absl::StatusOr<ExecResult> result = client_->Run(exec);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_LT(std::chrono::steady_clock::now() - started, std::chrono::seconds(5));
  EXPECT_TRUE(result->exited.timed_out());
  EXPECT_EQ(result->exited.signal(), SIGKILL);
  pid_t grandchild = std::stoi(result->stdout_data);
  EXPECT_TRUE(ProcessGone(grandchild))
      << "the background sleep " << grandchild << " survived the timeout";
}

TEST_F(AgentTest, StdinIsStreamedAndClosed) {
  Exec exec;
  exec.add_argv("cat");
  exec.set_stdin("first ");
  absl::StatusOr<std::unique_ptr<ExecStream>> stream = client_->Start(exec);
  ASSERT_TRUE(stream.ok()) << stream.status();
  ASSERT_TRUE((*stream)->WriteStdin("second").ok());
  ASSERT_TRUE((*stream)->CloseStdin().ok());
  std::string out;
  while (true) {
    absl::StatusOr<ExecStream::Event> event = (*stream)->Next();
    ASSERT_TRUE(event.ok()) << event.status();
    if (event->kind == ExecStream::Event::Kind::kExited) {
      EXPECT_EQ(event->exited.exit_code(), 0);
      break;
    }
    out += event->data;
  }
  EXPECT_EQ(out, "first second");
}

TEST_F(AgentTest, LargeStdinToAProcessThatDoesNotReadItDoesNotBlockTheExec) {
  // 1 MiB of stdin (more than a pipe holds) to a process that never reads
  // it: the process still runs, its output arrives and its exit comes.
  Exec exec = Shell("echo running");
  exec.set_stdin(std::string(1 << 20, 'i'));
  absl::StatusOr<ExecResult> result = client_->Run(exec);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->stdout_data, "running\n");
  EXPECT_EQ(result->exited.exit_code(), 0);
}

TEST_F(AgentTest, OutputArrivesAsItIsProduced) {
  // The first line must arrive while the process still waits for stdin:
  // output is streamed, not collected until the end.
  Exec exec = Shell("echo ready; read line; echo \"got $line\"");
  exec.set_close_stdin(false);
  absl::StatusOr<std::unique_ptr<ExecStream>> stream = client_->Start(exec);
  ASSERT_TRUE(stream.ok()) << stream.status();
  absl::StatusOr<ExecStream::Event> first = (*stream)->Next();
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_EQ(first->data, "ready\n");
  ASSERT_TRUE((*stream)->WriteStdin("ping\n").ok());
  absl::StatusOr<ExecStream::Event> second = (*stream)->Next();
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_EQ(second->data, "got ping\n");
}

TEST_F(AgentTest, InterleavedStreamsKeepTheirOrder) {
  absl::StatusOr<ExecResult> result = client_->Run(
      Shell("for i in 1 2 3 4 5 6 7 8 9; do echo out$i; echo err$i >&2; "
            "done"));
  ASSERT_TRUE(result.ok()) << result.status();
  std::string want_out, want_err;
  for (int i = 1; i <= 9; ++i) {
    want_out += absl::StrCat("out", i, "\n");
    want_err += absl::StrCat("err", i, "\n");
  }
  EXPECT_EQ(result->stdout_data, want_out);
  EXPECT_EQ(result->stderr_data, want_err);
}

TEST_F(AgentTest, LargeOutputArrivesWhole) {
  // 8 MiB through a 1 MiB buffer: the pump waits for the reader.
  absl::StatusOr<ExecResult> result =
      client_->Run(Shell("head -c 8388608 /dev/zero | tr '\\0' x"));
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->stdout_data, std::string(8 << 20, 'x'));
}

TEST_F(AgentTest, MissingProgramIsNotFound) {
  absl::StatusOr<ExecResult> result = client_->Run({"no-such-program-sbx"});
  EXPECT_EQ(result.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(result.status().message(), HasSubstr("no-such-program-sbx"));
}

TEST_F(AgentTest, BadCwdNamesTheStep) {
  Exec exec = Shell("true");
  exec.set_cwd(dir_ + "/missing");
  absl::StatusOr<ExecResult> result = client_->Run(exec);
  EXPECT_EQ(result.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(result.status().message(), HasSubstr("chdir"));
}

TEST_F(AgentTest, ArgvAndShellTogetherAreRefused) {
  Exec exec = Shell("true");
  exec.add_argv("true");
  EXPECT_EQ(client_->Run(exec).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(client_->Run(Exec()).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(AgentTest, ForegroundProcessDiesWithItsConnection) {
  absl::StatusOr<std::unique_ptr<ExecStream>> stream =
      client_->Start(Shell("exec sleep 1000"));
  ASSERT_TRUE(stream.ok()) << stream.status();
  pid_t pid = (*stream)->pid();
  (*stream)->Close();
  EXPECT_TRUE(ProcessGone(pid));
}

TEST_F(AgentTest, BackgroundProcessOutlivesItsConnectionAndReattaches) {
  Exec exec = Shell("echo started; read line; echo \"got $line\"; exit 7");
  exec.set_close_stdin(false);
  exec.set_background(true);
  absl::StatusOr<std::unique_ptr<ExecStream>> stream = client_->Start(exec);
  ASSERT_TRUE(stream.ok()) << stream.status();
  uint64_t id = (*stream)->process_id();
  absl::StatusOr<ExecStream::Event> started = (*stream)->Next();
  ASSERT_TRUE(started.ok()) << started.status();
  EXPECT_EQ(started->data, "started\n");
  (*stream)->Close();

  absl::StatusOr<std::vector<ProcessList::Process>> list =
      client_->ListProcesses();
  ASSERT_TRUE(list.ok()) << list.status();
  ASSERT_EQ(list->size(), 1u);
  EXPECT_EQ((*list)[0].process_id(), id);
  EXPECT_TRUE((*list)[0].background());
  EXPECT_TRUE((*list)[0].running());

  // Wait until the agent noticed the exec's connection is gone (the
  // process is detached), so the attachments below are the only ones.
  bool detached = false;
  for (int i = 0; i < 500 && !detached; ++i) {
    list = client_->ListProcesses();
    ASSERT_TRUE(list.ok());
    detached = list->size() == 1 && !(*list)[0].attached();
    if (!detached) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ASSERT_TRUE(detached);
  // A later attachment takes over from an earlier one.
  absl::StatusOr<std::unique_ptr<ExecStream>> first = client_->Attach(id);
  ASSERT_TRUE(first.ok()) << first.status();
  bool attached_first = false;  // the agent has served the first Attach
  for (int i = 0; i < 500 && !attached_first; ++i) {
    list = client_->ListProcesses();
    ASSERT_TRUE(list.ok());
    attached_first = list->size() == 1 && (*list)[0].attached();
    if (!attached_first) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ASSERT_TRUE(attached_first);
  absl::StatusOr<std::unique_ptr<ExecStream>> attached = client_->Attach(id);
  ASSERT_TRUE(attached.ok()) << attached.status();
  EXPECT_EQ((*first)->Next().status().code(),
            absl::StatusCode::kFailedPrecondition);

  ASSERT_TRUE((*attached)->WriteStdin("back\n").ok());
  std::string out;
  while (true) {
    absl::StatusOr<ExecStream::Event> event = (*attached)->Next();
    ASSERT_TRUE(event.ok()) << event.status();
    if (event->kind == ExecStream::Event::Kind::kExited) {
      EXPECT_EQ(event->exited.exit_code(), 7);
      break;
    }
    out += event->data;
  }
  EXPECT_EQ(out, "got back\n");
  // Its exit was read: it is gone from the table.
  list = client_->ListProcesses();
  ASSERT_TRUE(list.ok());
  EXPECT_TRUE(list->empty());
}

TEST_F(AgentTest, SignalFromAnotherConnection) {
  Exec exec = Shell("exec sleep 1000");
  exec.set_background(true);
  absl::StatusOr<std::unique_ptr<ExecStream>> stream = client_->Start(exec);
  ASSERT_TRUE(stream.ok()) << stream.status();
  uint64_t id = (*stream)->process_id();
  (*stream)->Close();
  ASSERT_TRUE(client_->Signal(id, SIGTERM).ok());
  absl::StatusOr<std::unique_ptr<ExecStream>> attached = client_->Attach(id);
  ASSERT_TRUE(attached.ok()) << attached.status();
  absl::StatusOr<ExecStream::Event> event = (*attached)->Next();
  ASSERT_TRUE(event.ok()) << event.status();
  ASSERT_EQ(event->kind, ExecStream::Event::Kind::kExited);
  EXPECT_EQ(event->exited.signal(), SIGTERM);
  EXPECT_EQ(client_->Signal(424242, SIGTERM).code(),
            absl::StatusCode::kNotFound);
}

TEST_F(AgentTest, SeveralExecsRunAtOnce) {
  // Four one-second sleeps at once finish in well under four seconds.
  auto started = std::chrono::steady_clock::now();
  std::vector<std::thread> threads;
  std::vector<std::string> outputs(4);
  for (int i = 0; i < 4; ++i) {
    threads.emplace_back([&, i] {
      absl::StatusOr<ExecResult> result =
          client_->Run(Shell(absl::StrCat("sleep 1; echo ", i)));
      if (result.ok()) outputs[i] = result->stdout_data;
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_THAT(outputs, ElementsAre("0\n", "1\n", "2\n", "3\n"));
  EXPECT_LT(std::chrono::steady_clock::now() - started,
            std::chrono::milliseconds(3000));
}

TEST_F(AgentTest, FileRoundTripWithModeAndParents) {
  std::string data;
  for (int i = 0; i < (3 << 20); ++i) data += static_cast<char>(i * 7 + i / 251);
  WriteFile request;
  request.set_path(dir_ + "/a/b/c.bin");
  request.set_mode(0600);
  request.set_make_parents(true);
  size_t offset = 0;
  absl::StatusOr<uint64_t> written = client_->WriteFile(
      request, [&](char* buffer, size_t size) -> absl::StatusOr<size_t> {
        size_t n = std::min(size, data.size() - offset);
        memcpy(buffer, data.data() + offset, n);
        offset += n;
        return n;
      });
  ASSERT_TRUE(written.ok()) << written.status();
  EXPECT_EQ(*written, data.size());
  absl::StatusOr<std::string> back = client_->ReadFileToString(dir_ + "/a/b/c.bin");
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_TRUE(*back == data);
  absl::StatusOr<FileInfo> info = client_->Stat(dir_ + "/a/b/c.bin");
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->type(), FileInfo::FILE);
  EXPECT_EQ(info->mode(), 0600u);
  EXPECT_EQ(info->size(), data.size());
}

TEST_F(AgentTest, ReadFileRange) {
  ASSERT_TRUE(client_->WriteFileFromString(dir_ + "/f", "0123456789").ok());
  ReadFile request;
  request.set_path(dir_ + "/f");
  request.set_offset(3);
  request.set_length(4);
  std::string got;
  ASSERT_TRUE(client_
                  ->ReadFile(request,
                             [&](std::string_view chunk) {
                               got += chunk;
                               return absl::OkStatus();
                             })
                  .ok());
  EXPECT_EQ(got, "3456");
}

TEST_F(AgentTest, BrokenTransferLeavesTheOldFile) {
  ASSERT_TRUE(client_->WriteFileFromString(dir_ + "/keep", "old").ok());
  {
    UniqueFd fd = RawConnection();
    Request request;
    request.mutable_write_file()->set_path(dir_ + "/keep");
    ASSERT_TRUE(WriteFrame(fd.get(), request).ok());
    Request chunk;
    chunk.mutable_chunk()->set_data("new data that never finishes");
    ASSERT_TRUE(WriteFrame(fd.get(), chunk).ok());
  }  // the connection vanishes without the last chunk
  // The agent cleans up its temporary file: wait for the directory to
  // hold only the original.
  bool clean = false;
  for (int i = 0; i < 500 && !clean; ++i) {
    absl::StatusOr<std::vector<FileInfo>> entries = client_->ListDir(dir_);
    ASSERT_TRUE(entries.ok());
    clean = entries->size() == 2;  // agent.sock and keep
    if (!clean) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_TRUE(clean) << "temporary file left behind";
  EXPECT_EQ(*client_->ReadFileToString(dir_ + "/keep"), "old");
}

TEST_F(AgentTest, ListDirStatRenameRemove) {
  ASSERT_TRUE(client_->MakeDir(dir_ + "/d/e", 0750, /*parents=*/true).ok());
  ASSERT_TRUE(client_->WriteFileFromString(dir_ + "/d/b.txt", "bb").ok());
  ASSERT_EQ(symlink("b.txt", (dir_ + "/d/a-link").c_str()), 0);
  absl::StatusOr<std::vector<FileInfo>> entries = client_->ListDir(dir_ + "/d");
  ASSERT_TRUE(entries.ok()) << entries.status();
  ASSERT_EQ(entries->size(), 3u);
  EXPECT_EQ((*entries)[0].name(), "a-link");
  EXPECT_EQ((*entries)[0].type(), FileInfo::SYMLINK);
  EXPECT_EQ((*entries)[0].symlink_target(), "b.txt");
  EXPECT_EQ((*entries)[1].name(), "b.txt");
  EXPECT_EQ((*entries)[1].size(), 2u);
  EXPECT_EQ((*entries)[2].name(), "e");
  EXPECT_EQ((*entries)[2].type(), FileInfo::DIRECTORY);
  EXPECT_EQ((*entries)[2].mode(), 0750u);

  ASSERT_TRUE(client_->Rename(dir_ + "/d/b.txt", dir_ + "/d/e/c.txt").ok());
  EXPECT_EQ(*client_->ReadFileToString(dir_ + "/d/e/c.txt"), "bb");
  EXPECT_EQ(client_->Stat(dir_ + "/d/b.txt").status().code(),
            absl::StatusCode::kNotFound);

  // A non-empty directory needs recursive.
  EXPECT_FALSE(client_->Remove(dir_ + "/d", /*recursive=*/false).ok());
  ASSERT_TRUE(client_->Remove(dir_ + "/d", /*recursive=*/true).ok());
  EXPECT_EQ(client_->Stat(dir_ + "/d").status().code(),
            absl::StatusCode::kNotFound);
}

TEST_F(AgentTest, BadPathsAreRefused) {
  EXPECT_EQ(client_->Stat("relative/path").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(client_->ReadFileToString(std::string("/tmp/a\0b", 8))
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(client_->ReadFileToString(dir_ + "/missing").status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(client_->ReadFileToString(dir_).status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(client_->Remove("/", true).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(client_->WriteFileFromString(dir_ + "/no/parent", "x").code(),
            absl::StatusCode::kNotFound);
}

TEST_F(AgentTest, AfterRestoreReseedsAndStepsTheClock) {
  std::string entropy(64, '\x5a');
  ASSERT_TRUE(client_->AfterRestore(entropy, 1'700'000'000'000'000'000).ok());
  EXPECT_EQ(system_.entropy, entropy);
  EXPECT_EQ(system_.clock_ns, 1'700'000'000'000'000'000);
  EXPECT_EQ(client_->AfterRestore("short", 1).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(client_->AfterRestore(entropy, 0).code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(AgentTest, SyncAndShutdown) {
  ASSERT_TRUE(client_->Sync().ok());
  EXPECT_EQ(system_.syncs, 1);
  // Not PID 1: the agent refuses to end the machine it runs on.
  EXPECT_EQ(client_->Shutdown().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(system_.reboots, 0);
}

TEST_F(AgentTest, AttachDiskIsRefusedWhenNotPid1) {
  EXPECT_EQ(client_->AttachDisk("/dev/vdb").code(),
            absl::StatusCode::kFailedPrecondition);
  absl::Status status = client_->AttachDisk("/dev/vdb");
  EXPECT_THAT(std::string(status.message()), HasSubstr("not the guest's init"));
  EXPECT_TRUE(system_.attached.empty());
}

// As the guest's init, booted with and without sbx.upper=late (the
// FakeSystem stands in for the machine).
class Pid1AgentTest : public AgentTest {
 protected:
  AgentOptions Options() override {
    return {.pid1 = true, .system = &system_, .late_disk = false};
  }
};
class LateAgentTest : public AgentTest {
 protected:
  AgentOptions Options() override {
    return {.pid1 = true, .system = &system_, .late_disk = true};
  }
};

TEST_F(Pid1AgentTest, AttachDiskNeedsALateBoot) {
  absl::Status status = client_->AttachDisk("/dev/vdb");
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(status.message()), HasSubstr("sbx.upper=late"));
  EXPECT_TRUE(system_.attached.empty());
}

TEST_F(LateAgentTest, AttachDiskTakesOneVdDeviceOnce) {
  for (const char* bad : {"", "/dev/sda", "/dev/vdb1", "/dev/vdB", "vdb",
                          "/dev/../dev/vdb", "/dev/vd"}) {
    absl::Status status = client_->AttachDisk(bad);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_THAT(std::string(status.message()), HasSubstr("/dev/vd[a-z]"));
  }
  EXPECT_TRUE(system_.attached.empty());
  ASSERT_TRUE(client_->AttachDisk("/dev/vdb").ok());
  EXPECT_THAT(system_.attached, ElementsAre("/dev/vdb"));
  absl::Status again = client_->AttachDisk("/dev/vdc");
  EXPECT_EQ(again.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(again.message()), HasSubstr("once"));
  EXPECT_THAT(system_.attached, ElementsAre("/dev/vdb"));
  // The agent still serves.
  EXPECT_TRUE(client_->Ping().ok());
}

TEST_F(LateAgentTest, AttachDiskRunsItsToolsAndReportsTheirFailure) {
  // What e2fsck would do: print on both streams and exit with a status.
  system_.attach_program = {"/bin/sh", "-c",
                            "echo checking; echo 'bad inode' >&2; exit 4"};
  system_.attach_status = absl::DataLossError("e2fsck said no");
  absl::Status status = client_->AttachDisk("/dev/vdb");
  EXPECT_EQ(status.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(std::string(status.message()), HasSubstr("e2fsck said no"));
  EXPECT_FALSE(system_.program_result.signaled);
  EXPECT_EQ(system_.program_result.code, 4);
  EXPECT_THAT(system_.program_result.output, HasSubstr("checking\n"));
  EXPECT_THAT(system_.program_result.output, HasSubstr("bad inode\n"));
  // The tool is gone from the agent's process list.
  absl::StatusOr<std::vector<ProcessList::Process>> processes =
      client_->ListProcesses();
  ASSERT_TRUE(processes.ok()) << processes.status();
  EXPECT_TRUE(processes->empty());
}

TEST_F(AgentTest, HostileFramesEndOnlyTheirConnection) {
  {
    // A length far over the limit.
    UniqueFd fd = RawConnection();
    const unsigned char huge[4] = {0xff, 0xff, 0xff, 0x7f};
    ASSERT_EQ(write(fd.get(), huge, 4), 4);
    absl::StatusOr<Response> response = ReadResponse(fd.get());
    EXPECT_EQ(response.status().code(), absl::StatusCode::kInvalidArgument);
  }
  {
    // Bytes that are no protobuf.
    UniqueFd fd = RawConnection();
    const unsigned char junk[] = {5, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff};
    ASSERT_EQ(write(fd.get(), junk, sizeof(junk)), ssize_t{sizeof(junk)});
    EXPECT_FALSE(ReadResponse(fd.get()).ok());
  }
  {
    // An empty request and a chunk out of place.
    UniqueFd fd = RawConnection();
    ASSERT_TRUE(WriteFrame(fd.get(), Request()).ok());
    EXPECT_EQ(ReadResponse(fd.get()).status().code(),
              absl::StatusCode::kUnimplemented);
    UniqueFd fd2 = RawConnection();
    Request chunk;
    chunk.mutable_chunk()->set_data("x");
    ASSERT_TRUE(WriteFrame(fd2.get(), chunk).ok());
    EXPECT_EQ(ReadResponse(fd2.get()).status().code(),
              absl::StatusCode::kInvalidArgument);
  }
  {
    // A peer that vanishes in the middle of a frame.
    UniqueFd fd = RawConnection();
    const unsigned char partial[] = {100, 0, 0, 0, 1, 2};
    ASSERT_EQ(write(fd.get(), partial, sizeof(partial)),
              ssize_t{sizeof(partial)});
  }
  // The agent still serves.
  EXPECT_TRUE(client_->Ping().ok());
}

}  // namespace
}  // namespace sbx::agent
