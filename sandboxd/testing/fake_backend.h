#ifndef SBX_SANDBOXD_TESTING_FAKE_BACKEND_H_
#define SBX_SANDBOXD_TESTING_FAKE_BACKEND_H_

// A VmBackend for the manager's and the service's unit tests: no VMM, no
// KVM. Each "VM" is a real sbx-agent serving on a unix socket in the
// sandbox's directory (`sbx-agent --listen unix:PATH`, which touches
// nothing on the host), so execs and file operations are real; sleep and
// wake end and restart that agent (its processes do not survive, unlike
// a real VM's). VMs live in a Registry that outlives one backend, so a
// second Manager (a "restarted sandboxd") can adopt them.

#include <signal.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "guest/client.h"
#include "sandboxd/manager.h"
#include "sandboxd/vm.h"

extern char** environ;

namespace sbx::sandboxd::testing {

// What the fake was asked to do, for assertions.
struct StartCall {
  VmSpec spec;
};

class Registry {
 public:
  absl::Mutex mu;
  // Live fake VMs by pid.
  std::map<pid_t, std::string> live ABSL_GUARDED_BY(mu);  // pid -> dir
  std::vector<StartCall> starts ABSL_GUARDED_BY(mu);
  std::vector<std::string> sleeps ABSL_GUARDED_BY(mu);  // snapshot dirs
  int templates_built ABSL_GUARDED_BY(mu) = 0;
  // Failure injection: the next Start / Sleep fails with this.
  absl::Status next_start_error ABSL_GUARDED_BY(mu);
  absl::Status next_sleep_error ABSL_GUARDED_BY(mu);
  // What a fake VM killed by the test says of its end.
  std::string death_reason ABSL_GUARDED_BY(mu) = "killed by the test";
};

inline void KillAndReap(pid_t pid) {
  ::kill(pid, SIGKILL);
  ::waitpid(pid, nullptr, 0);
}

class FakeVm final : public Vm {
 public:
  FakeVm(std::shared_ptr<Registry> registry, pid_t pid, std::string socket)
      : registry_(std::move(registry)),
        pid_(pid),
        client_(agent::NewUnixDialer(std::move(socket))) {}

  agent::Client& agent() override { return client_; }
  VmHandle handle() const override { return {pid_, 1}; }
  bool Alive(std::string* why_not) override {
    absl::MutexLock lock(&registry_->mu);
    if (registry_->live.count(pid_) != 0) return true;
    *why_not = registry_->death_reason;
    return false;
  }
  absl::Status Sleep(const std::string& snapshot_dir) override {
    {
      absl::MutexLock lock(&registry_->mu);
      if (!registry_->next_sleep_error.ok()) {
        absl::Status s = registry_->next_sleep_error;
        registry_->next_sleep_error = absl::OkStatus();
        return s;
      }
      registry_->sleeps.push_back(snapshot_dir);
    }
    std::filesystem::create_directories(snapshot_dir);
    std::ofstream(snapshot_dir + "/vmstate") << "fake";
    Kill();
    return absl::OkStatus();
  }
  void Kill() override {
    absl::MutexLock lock(&registry_->mu);
    if (registry_->live.erase(pid_) != 0) KillAndReap(pid_);
  }

 private:
  std::shared_ptr<Registry> registry_;
  pid_t pid_;
  agent::Client client_;
};

class FakeBackend final : public VmBackend {
 public:
  FakeBackend(std::shared_ptr<Registry> registry, std::string agent_binary)
      : registry_(std::move(registry)), agent_binary_(std::move(agent_binary)) {}

  absl::StatusOr<std::unique_ptr<Vm>> Start(const VmSpec& spec) override {
    {
      absl::MutexLock lock(&registry_->mu);
      registry_->starts.push_back({spec});
      if (!registry_->next_start_error.ok()) {
        absl::Status s = registry_->next_start_error;
        registry_->next_start_error = absl::OkStatus();
        return s;
      }
    }
    std::filesystem::create_directories(spec.dir);
    const std::string socket = spec.dir + "/agent.sock";
    ::unlink(socket.c_str());
    std::string listen = "unix:" + socket;
    std::vector<char*> argv = {agent_binary_.data(), const_cast<char*>("--listen"),
                               listen.data(), nullptr};
    pid_t pid;
    if (int rc = ::posix_spawn(&pid, agent_binary_.c_str(), nullptr, nullptr, argv.data(),
                               environ);
        rc != 0) {
      return absl::InternalError(absl::StrCat("posix_spawn ", agent_binary_, ": ", rc));
    }
    auto vm = std::make_unique<FakeVm>(registry_, pid, socket);
    {
      absl::MutexLock lock(&registry_->mu);
      registry_->live[pid] = spec.dir;
    }
    for (int i = 0; i < 500; ++i) {
      if (vm->agent().Ping().ok()) return vm;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    vm->Kill();
    return absl::DeadlineExceededError("fake agent did not answer");
  }

  absl::StatusOr<std::unique_ptr<Vm>> Adopt(const VmSpec& spec, const VmHandle& handle) override {
    absl::MutexLock lock(&registry_->mu);
    auto it = registry_->live.find(handle.pid);
    if (it == registry_->live.end() || it->second != spec.dir) {
      return absl::NotFoundError("no such fake VM");
    }
    return std::make_unique<FakeVm>(registry_, handle.pid, spec.dir + "/agent.sock");
  }

  absl::StatusOr<TemplateBuild> BuildTemplate(
      const TemplateSpec& spec, const std::function<void(const std::string&)>& progress) override {
    progress("booting (fake)");
    std::filesystem::create_directories(spec.dir + "/snapshot");
    std::ofstream(spec.dir + "/snapshot/vmstate") << "fake";
    absl::MutexLock lock(&registry_->mu);
    ++registry_->templates_built;
    TemplateBuild build;
    build.snapshot_dir = spec.dir + "/snapshot";
    build.seconds = 0.01;
    build.disk_slot_bytes = spec.disk_mib << 20;
    return build;
  }

 private:
  std::shared_ptr<Registry> registry_;
  std::string agent_binary_;
};

// ManagerOptions::make_disk for tests: a sparse file of slot_bytes and a
// note of fs_mib beside it.
inline absl::Status FakeMakeDisk(const std::string& path, uint64_t slot_bytes, uint64_t fs_mib) {
  if (std::filesystem::exists(path)) return absl::AlreadyExistsError(path);
  std::filesystem::create_directories(std::filesystem::path(path).parent_path());
  std::ofstream(path).close();
  std::filesystem::resize_file(path, slot_bytes);
  std::ofstream(path + ".fs_mib") << fs_mib;
  return absl::OkStatus();
}

// ManagerOptions for a test whose state lives under `dir`: stand-in kernel
// and rootfs files (the fake backend never boots them), 4 GiB of host
// memory for admission, a 4 GiB disk slot, FakeMakeDisk.
inline ManagerOptions FakeManagerOptions(const std::string& dir) {
  std::filesystem::create_directories(dir + "/images");
  std::ofstream(dir + "/images/vmlinux") << "kernel";
  std::ofstream(dir + "/images/rootfs.ext4") << "rootfs";
  ManagerOptions o;
  o.state_dir = dir + "/state";
  o.default_kernel = dir + "/images/vmlinux";
  o.default_rootfs = dir + "/images/rootfs.ext4";
  o.host_memory_bytes = uint64_t{4} << 30;
  o.max_disk_mib = 4096;
  o.make_disk = FakeMakeDisk;
  return o;
}

// Kills the fake VMs still running (a test's end).
inline void KillAll(Registry& registry) {
  absl::MutexLock lock(&registry.mu);
  for (const auto& [pid, d] : registry.live) KillAndReap(pid);
  registry.live.clear();
}

}  // namespace sbx::sandboxd::testing

#endif  // SBX_SANDBOXD_TESTING_FAKE_BACKEND_H_
