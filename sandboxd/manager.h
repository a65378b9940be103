#ifndef SBX_SANDBOXD_MANAGER_H_
#define SBX_SANDBOXD_MANAGER_H_

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "guest/client.h"
#include "sandboxd/store.h"
#include "sandboxd/vm.h"
#include "sbx/sandboxd/v1/state.pb.h"
#include "sbx/v1/sandbox.pb.h"

// The sandbox manager: sandboxd's logic without gRPC. It owns the
// templates and sandboxes of one state directory, starts, sleeps, wakes
// and deletes their VMs through a VmBackend, enforces the per-sandbox
// bounds and host admission, puts idle sandboxes to sleep, ends expired
// ones, and on start re-adopts the VMs a previous sandboxd left running.
//
// Every sandbox has a state (sbx.v1.SandboxState). A transition (create,
// sleep, wake, delete) holds the sandbox's operation lock for its duration
// and is bounded by the backend's deadlines; when one fails the sandbox
// either keeps its old state (a failed sleep leaves it running) or becomes
// FAILED with the reason, from which Delete always works.

namespace sbx::sandboxd {

struct ManagerOptions {
  std::string state_dir;
  // What a template is built from when its request names nothing.
  std::string default_kernel;
  std::string default_rootfs;
  // Per-sandbox bounds (a request beyond them: RESOURCE_EXHAUSTED).
  uint32_t max_vcpus = 8;
  uint64_t max_memory_mib = 16384;
  uint64_t max_disk_mib = 65536;
  // Template defaults.
  uint32_t template_vcpus = 1;
  uint64_t template_memory_mib = 512;
  // A sandbox's disk when its request says nothing.
  uint64_t default_disk_mib = 1024;
  // Admission: the guest memory of all running sandboxes (plus the one to
  // start) may not exceed host memory x this ratio.
  double memory_overcommit = 1.0;
  // 0: MemTotal of this host.
  uint64_t host_memory_bytes = 0;
  // cgroup memory limit of a VMM = guest RAM + this.
  uint64_t vmm_overhead_mib = 64;
  uint32_t pids_max = 64;
  // A sandbox whose request sets no idle_timeout sleeps after this; 0:
  // never.
  absl::Duration default_idle_timeout = absl::Minutes(10);
  // How often idle, expired and dead sandboxes are looked for.
  absl::Duration housekeeping_interval = absl::Seconds(1);
  // Makes a sandbox's writable disk: a sparse file of slot_bytes holding a
  // filesystem of fs_mib (vm_process.h MakeSandboxDisk).
  std::function<absl::Status(const std::string& path, uint64_t slot_bytes,
                             uint64_t fs_mib)>
      make_disk;
  // The guest device of the writable disk.
  std::string disk_device = "/dev/vdb";
};

// A latency histogram (seconds) with fixed buckets.
struct Histogram {
  static constexpr double kBounds[] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                                       1,     2.5,  5,     10,   30,  60,  300};
  uint64_t buckets[sizeof(kBounds) / sizeof(kBounds[0])] = {};  // cumulative: le bound
  uint64_t count = 0;
  double sum = 0;
  void Observe(double seconds);
};

// Counters for metrics.
struct ManagerStats {
  Histogram create_seconds, wake_seconds, exec_seconds;
  std::map<sbx::v1::SandboxState, int> sandboxes_by_state;
  uint64_t creates = 0, create_failures = 0;
  uint64_t wakes = 0, wake_failures = 0;
  uint64_t sleeps = 0, sleep_failures = 0;
  uint64_t restores = 0;  // VMs started from a snapshot, all causes
  uint64_t vmm_deaths = 0;
};

class Manager {
 public:
  // Opens the state directory, loads its records and reconciles them:
  // a RUNNING sandbox whose VMM still runs is adopted; one whose VMM is
  // gone comes back from its disk (it restarts from the template, its
  // files kept) when it is next used; interrupted transitions are finished
  // or failed. Starts the housekeeping thread.
  static absl::StatusOr<std::unique_ptr<Manager>> Create(
      ManagerOptions options, std::unique_ptr<VmBackend> backend);
  // Stops housekeeping. Running VMs keep running (the next sandboxd adopts
  // them).
  ~Manager();

  // ---- templates ----
  absl::StatusOr<sbx::v1::Template> CreateTemplate(
      const sbx::v1::CreateTemplateRequest& request,
      const std::function<void(const std::string&)>& progress);
  absl::StatusOr<sbx::v1::Template> GetTemplate(const std::string& name);
  std::vector<sbx::v1::Template> ListTemplates();
  absl::Status DeleteTemplate(const std::string& name);

  // ---- sandboxes ----
  absl::StatusOr<sbx::v1::Sandbox> Create(const sbx::v1::CreateSandboxRequest& request);
  absl::StatusOr<sbx::v1::Sandbox> Get(const std::string& id);
  absl::StatusOr<sbx::v1::ListSandboxesResponse> List(
      const sbx::v1::ListSandboxesRequest& request);
  absl::Status Delete(const std::string& id);
  absl::StatusOr<sbx::v1::Sandbox> Sleep(const std::string& id);
  absl::StatusOr<sbx::v1::Sandbox> Wake(const std::string& id);
  absl::StatusOr<sbx::v1::Sandbox> SetTimeouts(const sbx::v1::SetTimeoutsRequest& request);

  class Lease;
  // Access to a sandbox's guest for an exec or a file operation: wakes a
  // sleeping sandbox first; while a lease is held the sandbox does not go
  // to sleep by itself (and an explicit Sleep is refused when `exec`).
  absl::StatusOr<std::unique_ptr<Lease>> Acquire(const std::string& id, bool exec);

  ManagerStats Stats();
  // An exec's latency to its first event, from the service.
  void ObserveExec(double seconds);

  // Runs one housekeeping pass now (tests).
  void Housekeep();

 private:
  struct Entry;
  Manager(ManagerOptions options, std::unique_ptr<VmBackend> backend, Store store);

  void LoadAndReconcile();
  absl::StatusOr<std::shared_ptr<Entry>> Find(const std::string& id);
  VmSpec SpecFor(const sandboxd::v1::SandboxRecord& record, bool from_own_snapshot);
  absl::Status CheckAdmission(uint64_t memory_mib, const Entry* except);
  // REQUIRES: entry->op_mu held.
  absl::Status WakeLocked(Entry& entry);
  absl::Status SleepLocked(Entry& entry);
  void FailLocked(Entry& entry, const std::string& why);
  absl::Status SaveLocked(Entry& entry);
  void HousekeepingLoop();

  const ManagerOptions options_;
  std::unique_ptr<VmBackend> backend_;
  Store store_;
  uint64_t host_memory_bytes_ = 0;

  absl::Mutex mu_;
  std::map<std::string, std::shared_ptr<Entry>> sandboxes_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, sandboxd::v1::TemplateRecord> templates_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, std::string> idempotency_ ABSL_GUARDED_BY(mu_);  // key -> id
  ManagerStats stats_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::thread housekeeper_;
};

// A held sandbox: see Manager::Acquire.
class Manager::Lease {
 public:
  ~Lease();
  agent::Client& agent() { return vm_->agent(); }
  // The sandbox's env for execs.
  const std::map<std::string, std::string>& env() const { return env_; }
  const std::string& id() const { return id_; }

 private:
  friend class Manager;
  Lease(Manager* manager, std::shared_ptr<Entry> entry, std::shared_ptr<Vm> vm, bool exec);
  Manager* manager_;
  std::shared_ptr<Entry> entry_;
  std::shared_ptr<Vm> vm_;
  bool exec_;
  std::string id_;
  std::map<std::string, std::string> env_;
};

}  // namespace sbx::sandboxd

#endif  // SBX_SANDBOXD_MANAGER_H_
