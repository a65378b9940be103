// What the jail adds to starting a VMM (issue 7): a static program spawned
// and reaped through SpawnJailed with the mounts sandboxd gives a restored
// sbx-vmm (its binary, its directory read-write, a disk, a snapshot
// directory and a rootfs read-only, its own /dev, a /proc), beside the same
// program started with posix_spawn, in the same run: until the program
// runs (what a restore waits for), and until it has exited and been reaped
// (namespaces torn down). Needs root. No KVM:
// this is host work only, so these are real numbers of this host.
#include <fcntl.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "benchmark/benchmark.h"
#include "sandboxd/jail/jail.h"

extern char** environ;

namespace sbx::sandboxd {
namespace {

namespace fs = std::filesystem;

// A sandbox-like directory: root/ (the jail's root), vm/, disk.img,
// snapshot/, rootfs.ext4 (small files: the mounts cost the same).
struct Sandbox {
  std::string dir;
  Sandbox() {
    dir = "/tmp/sbx_jail_bench_" + std::to_string(::getpid());
    fs::remove_all(dir);
    fs::create_directories(dir + "/root");
    fs::create_directories(dir + "/vm");
    fs::create_directories(dir + "/snapshot");
    std::ofstream(dir + "/disk.img") << "disk";
    std::ofstream(dir + "/rootfs.ext4") << "rootfs";
    std::ofstream(dir + "/snapshot/vmstate") << "state";
    ::chmod((dir + "/root").c_str(), 0755);
    ::chown((dir + "/vm").c_str(), 64123, 64123);
    ::chown((dir + "/disk.img").c_str(), 64123, 64123);
  }
  ~Sandbox() { fs::remove_all(dir); }

  JailSpec Spec() const {
    JailSpec spec;
    spec.root_dir = dir + "/root";
    spec.binds = {{SBX_JAIL_PROBE, "/sbx-vmm", false, true},
                  {dir + "/vm", dir + "/vm", true},
                  {dir + "/disk.img", dir + "/disk.img", true},
                  {dir + "/snapshot", dir + "/snapshot"},
                  {dir + "/rootfs.ext4", dir + "/rootfs.ext4"}};
    spec.devices = {"/dev/null"};
    spec.mount_proc = true;
    spec.uid = 64123;
    spec.gid = 64123;
    spec.max_open_files = 2048;
    spec.max_processes = 256;
    spec.argv = {"/sbx-vmm", "pid"};
    return spec;
  }
};

void BM_PosixSpawn(benchmark::State& state) {
  char* argv[] = {const_cast<char*>(SBX_JAIL_PROBE), const_cast<char*>("pid"), nullptr};
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0);
  for (auto _ : state) {
    pid_t pid = 0;
    if (::posix_spawn(&pid, argv[0], &actions, nullptr, argv, environ) != 0) {
      state.SkipWithError("posix_spawn failed");
      break;
    }
    int status = 0;
    if (state.range(0) == 0) state.PauseTiming();  // 0: until exec only
    ::waitpid(pid, &status, 0);
    if (state.range(0) == 0) state.ResumeTiming();
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
      state.SkipWithError("the program failed");
      break;
    }
  }
  posix_spawn_file_actions_destroy(&actions);
}
BENCHMARK(BM_PosixSpawn)->Arg(1)->Arg(0)->Unit(benchmark::kMicrosecond)->UseRealTime();

void BM_SpawnJailed(benchmark::State& state) {
  if (::geteuid() != 0) {
    state.SkipWithError("the jail needs root");
    return;
  }
  Sandbox sandbox;
  JailSpec spec = sandbox.Spec();
  spec.new_net = state.range(0) != 0;  // 0: what a network namespace costs
  const bool with_exit = state.range(1) != 0;  // 0: until exec only
  for (auto _ : state) {
    absl::StatusOr<JailedProcess> p = SpawnJailed(spec);
    if (!p.ok()) {
      state.SkipWithError(std::string(p.status().message()).c_str());
      break;
    }
    if (!with_exit) state.PauseTiming();
    absl::StatusOr<ProcessExit> exit = p->Wait();
    if (!with_exit) state.ResumeTiming();
    if (!exit.ok() || !exit->exited_with(0)) {
      state.SkipWithError("the jailed program failed");
      break;
    }
  }
}
BENCHMARK(BM_SpawnJailed)
    ->Args({1, 1})
    ->Args({0, 1})
    ->Args({1, 0})
    ->Unit(benchmark::kMicrosecond)->UseRealTime();

}  // namespace
}  // namespace sbx::sandboxd

BENCHMARK_MAIN();
