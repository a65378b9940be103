#ifndef SBX_TESTS_E2E_VM_RUNNER_H_
#define SBX_TESTS_E2E_VM_RUNNER_H_

// What the end-to-end tests share: a VM running on its own thread under a
// watchdog, waiting for its agent, and progress lines on stdout.

#include <time.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>
#include <string_view>
#include <thread>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "base/test_facility.h"
#include "guest/client.h"
#include "vmm/machine.h"

namespace sbx::e2e {

// Generous: under an emulated KVM host, or on PVM with another test beside
// it, a boot takes minutes. They bound a hung VM, not a slow one.
inline constexpr auto kAgentDeadline = std::chrono::seconds(600);
// The most one VM of a test may run, whatever it does.
inline constexpr absl::Duration kVmDeadline = absl::Seconds(600);

// The host's wall-clock time in ns since the epoch (what AfterRestore
// takes).
inline int64_t UnixNowNs() {
  timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return int64_t{ts.tv_sec} * 1'000'000'000 + ts.tv_nsec;
}

// Runs `script` in the guest's shell with stdin closed; its stdout, or why
// it failed (a signal, or an exit status other than 0, with its output).
inline absl::StatusOr<std::string> Shell(agent::Client& client,
                                         const std::string& script) {
  agent::Exec exec;
  exec.set_shell(script);
  exec.set_close_stdin(true);
  absl::StatusOr<agent::ExecResult> result = client.Run(exec);
  if (!result.ok()) return result.status();
  if (!result->exited.has_exit_code() || result->exited.exit_code() != 0) {
    return absl::InternalError(absl::StrCat("`", script, "` failed: ",
                                            result->stdout_data,
                                            result->stderr_data));
  }
  return result->stdout_data;
}

// A progress line, flushed at once: where a hung test stopped.
inline void Step(std::string_view what) {
  std::printf("[ step ] %.*s\n", static_cast<int>(what.size()), what.data());
  std::fflush(stdout);
}

// Runs `machine` on its own thread. Past kVmDeadline a watchdog prints the
// console's tail and stops the machine, which closes its vsock sockets and
// so unblocks any client call: a hung VM fails its test, never hangs it.
class VmRunner {
 public:
  VmRunner(std::unique_ptr<vmm::Machine> machine, std::string console_path)
      : machine_(std::move(machine)), console_path_(std::move(console_path)) {
    thread_ = std::thread([this] {
      vmm::MachineExit exit = machine_->Run();
      absl::MutexLock lock(&mu_);
      exit_ = exit;
      ended_ = true;
    });
    watchdog_ = std::thread([this] {
      absl::MutexLock lock(&mu_);
      if (mu_.AwaitWithTimeout(absl::Condition(&ended_), kVmDeadline)) return;
      std::string tail = console();
      if (tail.size() > 4000) tail = tail.substr(tail.size() - 4000);
      std::printf("[ watchdog ] VM still running after %s: stopping it. "
                  "Console tail:\n%s\n",
                  absl::FormatDuration(kVmDeadline).c_str(), tail.c_str());
      std::fflush(stdout);
      machine_->Stop();
    });
  }

  ~VmRunner() {
    machine_->Stop();
    if (thread_.joinable()) thread_.join();
    {
      absl::MutexLock lock(&mu_);
      ended_ = true;
    }
    watchdog_.join();
  }

  vmm::Machine& machine() { return *machine_; }
  std::string console() const {
    return testing::ReadFileToString(console_path_);
  }

  // Waits for the VM to end by itself; how it ended.
  vmm::MachineExit Join() {
    thread_.join();
    absl::MutexLock lock(&mu_);
    return exit_;
  }

  // Pings the agent until it answers; the seconds that took.
  absl::StatusOr<double> WaitForAgent(agent::Client& client) {
    auto start = std::chrono::steady_clock::now();
    absl::Status last;
    while (std::chrono::steady_clock::now() - start < kAgentDeadline) {
      absl::StatusOr<agent::Pong> pong = client.Ping();
      if (pong.ok()) {
        return std::chrono::duration<double>(std::chrono::steady_clock::now() -
                                             start)
            .count();
      }
      last = pong.status();
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
    return absl::DeadlineExceededError(absl::StrCat(
        "agent did not answer: ", last.ToString(), "\nconsole:\n", console()));
  }

 private:
  std::unique_ptr<vmm::Machine> machine_;
  std::string console_path_;
  std::thread thread_;
  std::thread watchdog_;
  absl::Mutex mu_;
  bool ended_ ABSL_GUARDED_BY(mu_) = false;
  vmm::MachineExit exit_ ABSL_GUARDED_BY(mu_);
};

}  // namespace sbx::e2e

#endif  // SBX_TESTS_E2E_VM_RUNNER_H_
