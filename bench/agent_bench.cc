// The agent's costs against the host doing the same thing itself: the
// exec round trip of /bin/true through sbx-agent (the shipped binary, over
// a unix socket) against a plain fork+exec+wait of /bin/true, and file
// transfer throughput through the agent. bench/agent prints the ratio.
//
// Over vsock in a VM the round trip adds the vsock device's path; that
// needs real KVM to mean anything (see bench/README.md).

#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <thread>

#include "benchmark/benchmark.h"
#include "guest/client.h"
#include "guest/frame.h"

extern char** environ;

namespace sbx::agent {
namespace {

// One sbx-agent process for the whole run.
class AgentProcess {
 public:
  AgentProcess() {
    char pattern[] = "/tmp/agent_bench_XXXXXX";
    dir_ = mkdtemp(pattern);
    std::string socket = dir_ + "/agent.sock";
    std::string listen = "unix:" + socket;
    pid_ = fork();
    if (pid_ == 0) {
      execl(SBX_AGENT_BINARY, SBX_AGENT_BINARY, "--listen", listen.c_str(),
            nullptr);
      _exit(127);
    }
    client_ = std::make_unique<Client>(NewUnixDialer(socket));
    for (int i = 0; i < 500 && !client_->Ping().ok(); ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
  }
  ~AgentProcess() {
    kill(pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
    std::filesystem::remove_all(dir_);
  }
  Client& client() { return *client_; }
  const std::string& dir() const { return dir_; }

 private:
  std::string dir_;
  pid_t pid_ = -1;
  std::unique_ptr<Client> client_;
};

// A function-local static: destroyed at exit, which stops the agent.
AgentProcess& Agent() {
  static AgentProcess agent;
  return agent;
}

void BM_HostForkExecTrue(benchmark::State& state) {
  char arg0[] = "/bin/true";
  char* argv[] = {arg0, nullptr};
  for (auto _ : state) {
    pid_t pid;
    if (posix_spawn(&pid, "/bin/true", nullptr, nullptr, argv, environ) != 0) {
      state.SkipWithError("posix_spawn failed");
      break;
    }
    waitpid(pid, nullptr, 0);
  }
}
BENCHMARK(BM_HostForkExecTrue)->UseRealTime();

void BM_AgentExecTrue(benchmark::State& state) {
  Client& client = Agent().client();
  Exec exec;
  exec.add_argv("/bin/true");
  exec.set_close_stdin(true);
  for (auto _ : state) {
    absl::StatusOr<ExecResult> result = client.Run(exec);
    if (!result.ok() || result->exited.exit_code() != 0) {
      state.SkipWithError("exec through the agent failed");
      break;
    }
  }
}
BENCHMARK(BM_AgentExecTrue)->UseRealTime();

constexpr size_t kFileBytes = size_t{64} << 20;

void BM_AgentWriteFile(benchmark::State& state) {
  Client& client = Agent().client();
  std::string chunk(kMaxChunkBytes, 'x');
  WriteFile request;
  request.set_path(Agent().dir() + "/bench.bin");
  for (auto _ : state) {
    size_t left = kFileBytes;
    absl::StatusOr<uint64_t> written = client.WriteFile(
        request, [&](char* buffer, size_t size) -> absl::StatusOr<size_t> {
          size_t n = std::min({size, left, chunk.size()});
          memcpy(buffer, chunk.data(), n);
          left -= n;
          return n;
        });
    if (!written.ok()) {
      state.SkipWithError("write through the agent failed");
      break;
    }
  }
  state.SetBytesProcessed(int64_t(state.iterations()) * kFileBytes);
}
BENCHMARK(BM_AgentWriteFile)->UseRealTime()->Unit(benchmark::kMillisecond);

void BM_AgentReadFile(benchmark::State& state) {
  Client& client = Agent().client();
  ReadFile request;
  request.set_path(Agent().dir() + "/bench.bin");
  for (auto _ : state) {
    uint64_t got = 0;
    absl::StatusOr<FileInfo> info =
        client.ReadFile(request, [&](std::string_view data) {
          got += data.size();
          return absl::OkStatus();
        });
    if (!info.ok() || got != kFileBytes) {
      state.SkipWithError("read through the agent failed (run write first)");
      break;
    }
  }
  state.SetBytesProcessed(int64_t(state.iterations()) * kFileBytes);
}
BENCHMARK(BM_AgentReadFile)->UseRealTime()->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace sbx::agent

BENCHMARK_MAIN();
