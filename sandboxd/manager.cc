#include "sandboxd/manager.h"

#include <sys/stat.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <system_error>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "base/logging.h"
#include "base/status.h"
#include "base/status_macros.h"
#include "google/protobuf/util/time_util.h"
#include "vmm/config.h"

namespace sbx::sandboxd {

using google::protobuf::util::TimeUtil;
using sandboxd::v1::SandboxRecord;
using sandboxd::v1::TemplateRecord;
using sbx::v1::SandboxState;

struct Manager::Entry {
  // Held for the whole of a transition (create, sleep, wake, delete):
  // seconds. Taken before `mu`.
  absl::Mutex op_mu;
  absl::Mutex mu;
  SandboxRecord record ABSL_GUARDED_BY(mu);
  std::shared_ptr<Vm> vm ABSL_GUARDED_BY(mu);
  int leases ABSL_GUARDED_BY(mu) = 0;
  int execs ABSL_GUARDED_BY(mu) = 0;
  absl::Time last_active ABSL_GUARDED_BY(mu) = absl::Now();
  // Deleted (or its create failed): whoever waited on op_mu must not use it.
  bool gone ABSL_GUARDED_BY(mu) = false;
};

namespace {

constexpr char kDefaultTemplate[] = "default";

google::protobuf::Timestamp ToProto(absl::Time t) {
  return TimeUtil::NanosecondsToTimestamp(absl::ToUnixNanos(t));
}
absl::Time FromProto(const google::protobuf::Timestamp& t) {
  return absl::FromUnixNanos(TimeUtil::TimestampToNanoseconds(t));
}
absl::Duration FromProto(const google::protobuf::Duration& d) {
  return absl::Nanoseconds(TimeUtil::DurationToNanoseconds(d));
}
google::protobuf::Duration ToProto(absl::Duration d) {
  return TimeUtil::NanosecondsToDuration(absl::ToInt64Nanoseconds(d));
}

const char* StateName(SandboxState state) {
  return sbx::v1::SandboxState_Name(state).c_str();
}

absl::StatusOr<std::string> RealPath(const std::string& path, const char* what) {
  if (path.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "no ", what, " given and sandboxd has no default (--kernel/--rootfs)"));
  }
  char* resolved = ::realpath(path.c_str(), nullptr);
  if (resolved == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, " ", path, ": ", std::strerror(errno)));
  }
  std::string result(resolved);
  std::free(resolved);
  struct stat st;
  if (::stat(result.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) {
    return absl::InvalidArgumentError(absl::StrCat(what, " ", path, " is not a file"));
  }
  return result;
}

}  // namespace

void Histogram::Observe(double seconds) {
  for (size_t i = 0; i < sizeof(kBounds) / sizeof(kBounds[0]); ++i) {
    if (seconds <= kBounds[i]) ++buckets[i];
  }
  ++count;
  sum += seconds;
}

void Manager::ObserveExec(double seconds) {
  absl::MutexLock lock(&mu_);
  stats_.exec_seconds.Observe(seconds);
}

// ---------------------------------------------------------------- lease

Manager::Lease::Lease(Manager* manager, std::shared_ptr<Entry> entry,
                      std::shared_ptr<Vm> vm, bool exec)
    : manager_(manager), entry_(std::move(entry)), vm_(std::move(vm)), exec_(exec) {
  absl::MutexLock lock(&entry_->mu);
  id_ = entry_->record.sandbox().id();
  env_ = {entry_->record.env().begin(), entry_->record.env().end()};
}

Manager::Lease::~Lease() {
  absl::MutexLock lock(&entry_->mu);
  --entry_->leases;
  if (exec_) --entry_->execs;
  entry_->last_active = absl::Now();
}

// ---------------------------------------------------------------- manager

Manager::Manager(ManagerOptions options, std::unique_ptr<VmBackend> backend, Store store)
    : options_(std::move(options)), backend_(std::move(backend)), store_(std::move(store)) {}

absl::StatusOr<std::unique_ptr<Manager>> Manager::Create(
    ManagerOptions options, std::unique_ptr<VmBackend> backend) {
  if (!options.make_disk) return absl::InvalidArgumentError("ManagerOptions.make_disk unset");
  SBX_ASSIGN_OR_RETURN(Store store, Store::Open(options.state_dir));
  std::unique_ptr<Manager> m(new Manager(std::move(options), std::move(backend), std::move(store)));
  m->host_memory_bytes_ = m->options_.host_memory_bytes;
  if (m->host_memory_bytes_ == 0) {
    SBX_ASSIGN_OR_RETURN(m->host_memory_bytes_, vmm::HostMemoryBytes());
  }
  m->LoadAndReconcile();
  if (m->options_.housekeeping_interval > absl::ZeroDuration()) {
    m->housekeeper_ = std::thread([mp = m.get()] { mp->HousekeepingLoop(); });
  }
  return m;
}

Manager::~Manager() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  if (housekeeper_.joinable()) housekeeper_.join();
}

void Manager::LoadAndReconcile() {
  for (TemplateRecord& t : store_.LoadTemplates()) {
    if (t.template_().state() != sbx::v1::READY) continue;
    absl::MutexLock lock(&mu_);
    templates_[t.template_().name()] = std::move(t);
  }
  for (SandboxRecord& record : store_.LoadSandboxes()) {
    const std::string id = record.sandbox().id();
    const SandboxState state = record.sandbox().state();
    const char* name = StateName(state);
    if (state == sbx::v1::CREATING || state == sbx::v1::DELETING) {
      // Interrupted: the client of a create never got the id; a delete
      // was asked for. Either way the sandbox goes, with any VMM left.
      if (record.vmm_pid() > 0) {
        absl::StatusOr<std::unique_ptr<Vm>> vm = backend_->Adopt(
            SpecFor(record, false), {record.vmm_pid(), record.vmm_start_ticks()});
        if (vm.ok()) (*vm)->Kill();
      }
      SBX_LOG(INFO) << "[" << id << "] removing (it was " << name << " when sandboxd stopped)";
      absl::Status removed = store_.RemoveSandbox(id);
      if (!removed.ok()) SBX_LOG(WARNING) << "[" << id << "] " << removed;
      continue;
    }
    {
      absl::MutexLock lock(&mu_);
      if (templates_.count(record.sandbox().template_()) == 0 && state != sbx::v1::FAILED) {
        record.mutable_sandbox()->set_state(sbx::v1::FAILED);
        record.mutable_sandbox()->set_failure(absl::StrCat(
            "its template \"", record.sandbox().template_(), "\" is gone"));
      }
    }
    auto entry = std::make_shared<Entry>();
    std::shared_ptr<Vm> vm;
    if (record.sandbox().state() != sbx::v1::FAILED &&
        record.sandbox().state() != sbx::v1::SLEEPING) {
      // RUNNING, PAUSING or WAKING: its VMM may still run.
      if (record.vmm_pid() > 0) {
        absl::StatusOr<std::unique_ptr<Vm>> adopted = backend_->Adopt(
            SpecFor(record, false), {record.vmm_pid(), record.vmm_start_ticks()});
        if (adopted.ok()) {
          vm = std::move(*adopted);
        } else {
          SBX_LOG(WARNING) << "[" << id << "] its VMM (pid " << record.vmm_pid()
                           << ") cannot be adopted: " << adopted.status();
        }
      }
      if (vm != nullptr) {
        SBX_LOG(INFO) << "[" << id << "] adopted its running VMM (pid " << record.vmm_pid() << ")";
        record.mutable_sandbox()->set_state(sbx::v1::RUNNING);
      } else {
        // No VM: it comes back on its next use, from its last sleep if
        // that is still what its disk belongs to, else from the template
        // with its disk (files kept, processes lost).
        SBX_LOG(INFO) << "[" << id << "] was " << name << " with no VMM left: it "
                      << (record.has_snapshot() ? "wakes from its last sleep"
                                                : "restarts from its template with its files")
                      << " on next use";
        record.mutable_sandbox()->set_state(sbx::v1::SLEEPING);
        record.set_vmm_pid(0);
        record.set_vmm_start_ticks(0);
      }
    }
    {
      absl::MutexLock lock(&entry->mu);
      entry->record = record;
      entry->vm = std::move(vm);
      if (record.sandbox().has_last_active_at()) {
        entry->last_active = FromProto(record.sandbox().last_active_at());
      }
      absl::Status saved = store_.SaveSandbox(entry->record);
      if (!saved.ok()) SBX_LOG(WARNING) << "[" << id << "] " << saved;
    }
    absl::MutexLock lock(&mu_);
    if (!record.idempotency_key().empty()) idempotency_[record.idempotency_key()] = id;
    sandboxes_[id] = std::move(entry);
  }
}

absl::StatusOr<std::shared_ptr<Manager::Entry>> Manager::Find(const std::string& id) {
  SBX_RETURN_IF_ERROR(ValidateSandboxId(id));
  absl::MutexLock lock(&mu_);
  auto it = sandboxes_.find(id);
  if (it == sandboxes_.end()) {
    return absl::NotFoundError(absl::StrCat("no sandbox ", id));
  }
  return it->second;
}

VmSpec Manager::SpecFor(const SandboxRecord& record, bool from_own_snapshot) {
  const std::string& id = record.sandbox().id();
  VmSpec spec;
  spec.dir = store_.SandboxDir(id);
  std::string rootfs;
  {
    absl::MutexLock lock(&mu_);
    auto it = templates_.find(record.sandbox().template_());
    if (it != templates_.end()) rootfs = it->second.template_().rootfs();
  }
  spec.template_snapshot_dir =
      absl::StrCat(store_.TemplateDir(record.sandbox().template_()), "/snapshot");
  spec.snapshot_dir =
      from_own_snapshot ? absl::StrCat(spec.dir, "/snapshot") : spec.template_snapshot_dir;
  spec.disks = {rootfs, absl::StrCat(spec.dir, "/disk.img")};
  spec.attach_device = from_own_snapshot ? "" : options_.disk_device;
  spec.cgroup_name = id;
  spec.limits.cpu_millis = record.sandbox().vcpus() * 1000;
  spec.limits.memory_bytes = (record.sandbox().memory_mib() + options_.vmm_overhead_mib) << 20;
  spec.limits.pids_max = options_.pids_max;
  return spec;
}

absl::Status Manager::CheckAdmission(uint64_t memory_mib, const Entry* except) {
  std::vector<std::shared_ptr<Entry>> entries;
  {
    absl::MutexLock lock(&mu_);
    for (const auto& [id, e] : sandboxes_) entries.push_back(e);
  }
  uint64_t running_mib = 0;
  for (const auto& e : entries) {
    if (e.get() == except) continue;
    absl::MutexLock lock(&e->mu);
    SandboxState s = e->record.sandbox().state();
    if (e->vm != nullptr || s == sbx::v1::CREATING || s == sbx::v1::WAKING) {
      running_mib += e->record.sandbox().memory_mib();
    }
  }
  const double limit_mib =
      static_cast<double>(host_memory_bytes_ >> 20) * options_.memory_overcommit;
  if (static_cast<double>(running_mib + memory_mib) > limit_mib) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "host full: running sandboxes hold ", running_mib, " MiB of guest memory, ",
        memory_mib, " MiB more would exceed the admission limit of ",
        static_cast<uint64_t>(limit_mib), " MiB (host memory x ", options_.memory_overcommit,
        "); delete or sleep a sandbox"));
  }
  return absl::OkStatus();
}

absl::Status Manager::SaveLocked(Entry& entry) {
  absl::MutexLock lock(&entry.mu);
  *entry.record.mutable_sandbox()->mutable_last_active_at() = ToProto(entry.last_active);
  return store_.SaveSandbox(entry.record);
}

void Manager::FailLocked(Entry& entry, const std::string& why) {
  {
    absl::MutexLock lock(&entry.mu);
    SBX_LOG(WARNING) << "[" << entry.record.sandbox().id() << "] failed: " << why;
    entry.record.mutable_sandbox()->set_state(sbx::v1::FAILED);
    entry.record.mutable_sandbox()->set_failure(why);
    entry.record.set_vmm_pid(0);
    entry.vm.reset();
  }
  absl::Status saved = SaveLocked(entry);
  if (!saved.ok()) SBX_LOG(WARNING) << saved;
}

// ---------------------------------------------------------------- templates

absl::StatusOr<sbx::v1::Template> Manager::CreateTemplate(
    const sbx::v1::CreateTemplateRequest& request,
    const std::function<void(const std::string&)>& progress) {
  SBX_RETURN_IF_ERROR(ValidateTemplateName(request.name()));
  SBX_ASSIGN_OR_RETURN(std::string kernel,
                       RealPath(request.kernel().empty() ? options_.default_kernel
                                                         : request.kernel(),
                                "kernel"));
  SBX_ASSIGN_OR_RETURN(std::string rootfs,
                       RealPath(request.rootfs().empty() ? options_.default_rootfs
                                                         : request.rootfs(),
                                "rootfs"));
  TemplateSpec spec;
  spec.dir = store_.TemplateDir(request.name());
  spec.kernel = kernel;
  spec.rootfs = rootfs;
  spec.vcpus = request.vcpus() == 0 ? options_.template_vcpus : request.vcpus();
  spec.memory_mib = request.memory_mib() == 0 ? options_.template_memory_mib : request.memory_mib();
  // The disk slot: the largest disk a sandbox may have (sparse: free).
  spec.disk_mib = options_.max_disk_mib;
  const uint64_t default_disk_mib =
      request.disk_mib() == 0 ? options_.default_disk_mib : request.disk_mib();
  if (spec.vcpus > options_.max_vcpus || spec.vcpus > vmm::kMaxVcpus) {
    return absl::ResourceExhaustedError(absl::StrCat(
        spec.vcpus, " vCPUs is over this sandboxd's bound of ", options_.max_vcpus));
  }
  if (spec.memory_mib > options_.max_memory_mib || spec.memory_mib < 64) {
    return absl::ResourceExhaustedError(absl::StrCat(
        spec.memory_mib, " MiB of memory is outside this sandboxd's bounds (64 to ",
        options_.max_memory_mib, " MiB)"));
  }
  if (default_disk_mib > options_.max_disk_mib || default_disk_mib < 16) {
    return absl::ResourceExhaustedError(absl::StrCat(
        default_disk_mib, " MiB of disk is outside this sandboxd's bounds (16 to ",
        options_.max_disk_mib, " MiB)"));
  }

  TemplateRecord record;
  sbx::v1::Template& t = *record.mutable_template_();
  t.set_name(request.name());
  t.set_state(sbx::v1::BUILDING);
  t.set_kernel(kernel);
  t.set_rootfs(rootfs);
  t.set_vcpus(spec.vcpus);
  t.set_memory_mib(spec.memory_mib);
  t.set_disk_mib(default_disk_mib);
  *t.mutable_created_at() = ToProto(absl::Now());
  {
    absl::MutexLock lock(&mu_);
    if (templates_.count(request.name()) != 0) {
      return absl::AlreadyExistsError(
          absl::StrCat("template \"", request.name(), "\" exists (delete it first)"));
    }
    templates_[request.name()] = record;
  }
  SBX_LOG(INFO) << "template " << request.name() << ": building from " << kernel << " and "
                << rootfs;
  absl::StatusOr<TemplateBuild> build = backend_->BuildTemplate(spec, progress);
  if (!build.ok()) {
    absl::MutexLock lock(&mu_);
    templates_.erase(request.name());
    return build.status();
  }
  t.set_state(sbx::v1::READY);
  *t.mutable_build_time() = ToProto(absl::Seconds(build->seconds));
  record.set_disk_slot_bytes(spec.disk_mib << 20);
  absl::Status saved = store_.SaveTemplate(record);
  absl::MutexLock lock(&mu_);
  if (!saved.ok()) {
    templates_.erase(request.name());
    (void)store_.RemoveTemplate(request.name());
    return saved;
  }
  templates_[request.name()] = record;
  return t;
}

absl::StatusOr<sbx::v1::Template> Manager::GetTemplate(const std::string& name) {
  SBX_RETURN_IF_ERROR(ValidateTemplateName(name));
  std::vector<sbx::v1::Template> all = ListTemplates();
  for (sbx::v1::Template& t : all) {
    if (t.name() == name) return std::move(t);
  }
  return absl::NotFoundError(absl::StrCat("no template \"", name, "\""));
}

std::vector<sbx::v1::Template> Manager::ListTemplates() {
  std::map<std::string, uint32_t> users;
  std::vector<std::shared_ptr<Entry>> entries;
  std::vector<sbx::v1::Template> result;
  {
    absl::MutexLock lock(&mu_);
    for (const auto& [id, e] : sandboxes_) entries.push_back(e);
    for (const auto& [name, record] : templates_) result.push_back(record.template_());
  }
  for (const auto& e : entries) {
    absl::MutexLock lock(&e->mu);
    ++users[e->record.sandbox().template_()];
  }
  for (sbx::v1::Template& t : result) t.set_sandboxes(users[t.name()]);
  return result;
}

absl::Status Manager::DeleteTemplate(const std::string& name) {
  SBX_ASSIGN_OR_RETURN(sbx::v1::Template t, GetTemplate(name));
  if (t.state() == sbx::v1::BUILDING) {
    return absl::FailedPreconditionError(
        absl::StrCat("template \"", name, "\" is still building"));
  }
  if (t.sandboxes() > 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        "template \"", name, "\" is used by ", t.sandboxes(), " sandbox(es): delete them first"));
  }
  {
    absl::MutexLock lock(&mu_);
    templates_.erase(name);
  }
  return store_.RemoveTemplate(name);
}

// ---------------------------------------------------------------- sandboxes

absl::StatusOr<sbx::v1::Sandbox> Manager::Create(const sbx::v1::CreateSandboxRequest& request) {
  const std::string template_name =
      request.template_().empty() ? kDefaultTemplate : request.template_();
  SBX_RETURN_IF_ERROR(ValidateTemplateName(template_name));
  for (const auto& [key, value] : request.env()) {
    if (key.empty() || key.find('=') != std::string::npos || key.find('\0') != std::string::npos) {
      return absl::InvalidArgumentError(absl::StrCat("bad env name \"", key, "\""));
    }
  }
  if (!request.idempotency_key().empty()) {
    std::string existing;
    {
      absl::MutexLock lock(&mu_);
      auto it = idempotency_.find(request.idempotency_key());
      if (it != idempotency_.end()) existing = it->second;
    }
    if (!existing.empty()) return Get(existing);
  }
  bool have_template;
  {
    absl::MutexLock lock(&mu_);
    have_template = templates_.count(template_name) != 0;
  }
  if (!have_template && template_name == kDefaultTemplate &&
      !options_.default_kernel.empty() && !options_.default_rootfs.empty()) {
    sbx::v1::CreateTemplateRequest build;
    build.set_name(kDefaultTemplate);
    absl::StatusOr<sbx::v1::Template> built = CreateTemplate(build, [](const std::string& line) {
      SBX_LOG(INFO) << "template default: " << line;
    });
    if (!built.ok() && built.status().code() != absl::StatusCode::kAlreadyExists) {
      return Annotate(built.status(), "building the default template");
    }
  }
  TemplateRecord tpl;
  {
    absl::MutexLock lock(&mu_);
    auto it = templates_.find(template_name);
    if (it == templates_.end()) {
      return absl::NotFoundError(absl::StrCat("no template \"", template_name, "\""));
    }
    tpl = it->second;
  }
  const sbx::v1::Template& t = tpl.template_();
  if (t.state() != sbx::v1::READY) {
    return absl::FailedPreconditionError(
        absl::StrCat("template \"", template_name, "\" is still building"));
  }
  if (request.vcpus() > options_.max_vcpus) {
    return absl::ResourceExhaustedError(absl::StrCat(
        request.vcpus(), " vCPUs is over this sandboxd's per-sandbox bound of ",
        options_.max_vcpus));
  }
  if (request.memory_mib() > options_.max_memory_mib) {
    return absl::ResourceExhaustedError(absl::StrCat(
        request.memory_mib(), " MiB of memory is over this sandboxd's per-sandbox bound of ",
        options_.max_memory_mib, " MiB"));
  }
  if (request.disk_mib() > options_.max_disk_mib) {
    return absl::ResourceExhaustedError(absl::StrCat(
        request.disk_mib(), " MiB of disk is over this sandboxd's per-sandbox bound of ",
        options_.max_disk_mib, " MiB"));
  }
  // A snapshot fixes the vCPUs and memory of every VM restored from it.
  if (request.vcpus() != 0 && request.vcpus() != t.vcpus()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "template \"", template_name, "\" has ", t.vcpus(), " vCPU(s); sandboxes of it cannot have ",
        request.vcpus(), " (build a template with that many)"));
  }
  if (request.memory_mib() != 0 && request.memory_mib() != t.memory_mib()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "template \"", template_name, "\" has ", t.memory_mib(),
        " MiB of memory; sandboxes of it cannot have ", request.memory_mib(),
        " (build a template with that much)"));
  }
  const uint64_t disk_mib = request.disk_mib() == 0 ? t.disk_mib() : request.disk_mib();
  if (disk_mib < 16 || (disk_mib << 20) > tpl.disk_slot_bytes()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "disk of ", disk_mib, " MiB: must be 16 to ", tpl.disk_slot_bytes() >> 20, " MiB"));
  }
  const auto check_duration = [](const google::protobuf::Duration& d, const char* what) {
    if (d.seconds() < 0 || d.nanos() < 0) {
      return absl::InvalidArgumentError(absl::StrCat(what, " must not be negative"));
    }
    return absl::OkStatus();
  };
  SBX_RETURN_IF_ERROR(check_duration(request.idle_timeout(), "idle_timeout"));
  SBX_RETURN_IF_ERROR(check_duration(request.ttl(), "ttl"));

  const absl::Time create_start = absl::Now();
  auto entry = std::make_shared<Entry>();
  absl::MutexLock op(&entry->op_mu);
  SBX_RETURN_IF_ERROR(CheckAdmission(t.memory_mib(), nullptr));
  const absl::Time now = absl::Now();
  SandboxRecord record;
  sbx::v1::Sandbox& s = *record.mutable_sandbox();
  s.set_id(NewSandboxId());
  s.set_template_(template_name);
  s.set_state(sbx::v1::CREATING);
  s.set_vcpus(t.vcpus());
  s.set_memory_mib(t.memory_mib());
  s.set_disk_mib(disk_mib);
  s.mutable_labels()->insert(request.labels().begin(), request.labels().end());
  *s.mutable_idle_timeout() = request.has_idle_timeout()
                                  ? request.idle_timeout()
                                  : ToProto(options_.default_idle_timeout);
  *s.mutable_ttl() = request.ttl();
  *s.mutable_created_at() = ToProto(now);
  *s.mutable_last_active_at() = ToProto(now);
  if (FromProto(request.ttl()) > absl::ZeroDuration()) {
    *s.mutable_expires_at() = ToProto(now + FromProto(request.ttl()));
  }
  record.mutable_env()->insert(request.env().begin(), request.env().end());
  record.set_idempotency_key(request.idempotency_key());
  record.set_disk_slot_bytes(tpl.disk_slot_bytes());
  const std::string id = s.id();
  {
    absl::MutexLock lock(&entry->mu);
    entry->record = record;
  }
  std::string other;
  {
    absl::MutexLock lock(&mu_);
    if (!request.idempotency_key().empty()) {
      // A concurrent create with the same key may have got here first.
      auto it = idempotency_.find(request.idempotency_key());
      if (it != idempotency_.end()) other = it->second;
      if (other.empty()) idempotency_[request.idempotency_key()] = id;
    }
    if (other.empty()) sandboxes_[id] = entry;
  }
  if (!other.empty()) return Get(other);
  const auto fail = [&](const absl::Status& status) {
    {
      absl::MutexLock lock(&entry->mu);
      entry->gone = true;
    }
    {
      absl::MutexLock lock(&mu_);
      sandboxes_.erase(id);
      if (!request.idempotency_key().empty()) idempotency_.erase(request.idempotency_key());
      ++stats_.create_failures;
    }
    absl::Status removed = store_.RemoveSandbox(id);
    if (!removed.ok()) SBX_LOG(WARNING) << "[" << id << "] " << removed;
    SBX_LOG(WARNING) << "[" << id << "] create failed: " << status;
    return status;
  };
  SBX_LOG(INFO) << "[" << id << "] creating from template " << template_name << " (" << t.vcpus()
                << " vCPU, " << t.memory_mib() << " MiB, disk " << disk_mib << " MiB)";
  if (absl::Status saved = store_.SaveSandbox(record); !saved.ok()) return fail(saved);
  const std::string dir = store_.SandboxDir(id);
  if (absl::Status made = options_.make_disk(absl::StrCat(dir, "/disk.img"),
                                             tpl.disk_slot_bytes(), disk_mib);
      !made.ok()) {
    return fail(Annotate(made, "making the sandbox's disk"));
  }
  absl::StatusOr<std::unique_ptr<Vm>> vm = backend_->Start(SpecFor(record, false));
  if (!vm.ok()) return fail(Annotate(vm.status(), "starting the sandbox's VM"));
  {
    absl::MutexLock lock(&entry->mu);
    entry->vm = std::move(*vm);
    const VmHandle handle = entry->vm->handle();
    entry->record.set_vmm_pid(handle.pid);
    entry->record.set_vmm_start_ticks(handle.start_ticks);
    entry->record.mutable_sandbox()->set_state(sbx::v1::RUNNING);
    entry->last_active = absl::Now();
  }
  if (absl::Status saved = SaveLocked(*entry); !saved.ok()) {
    std::shared_ptr<Vm> doomed;
    {
      absl::MutexLock lock(&entry->mu);
      doomed = entry->vm;
    }
    doomed->Kill();
    return fail(saved);
  }
  {
    absl::MutexLock lock(&mu_);
    ++stats_.creates;
    ++stats_.restores;
    stats_.create_seconds.Observe(absl::ToDoubleSeconds(absl::Now() - create_start));
  }
  SBX_LOG(INFO) << "[" << id << "] running";
  return Get(id);
}

absl::StatusOr<sbx::v1::Sandbox> Manager::Get(const std::string& id) {
  SBX_ASSIGN_OR_RETURN(std::shared_ptr<Entry> entry, Find(id));
  absl::MutexLock lock(&entry->mu);
  sbx::v1::Sandbox s = entry->record.sandbox();
  s.set_running_execs(static_cast<uint32_t>(entry->execs));
  *s.mutable_last_active_at() = ToProto(entry->last_active);
  return s;
}

absl::StatusOr<sbx::v1::ListSandboxesResponse> Manager::List(
    const sbx::v1::ListSandboxesRequest& request) {
  uint32_t page_size = request.page_size() == 0 ? 100 : request.page_size();
  if (page_size > 1000) {
    return absl::InvalidArgumentError("page_size is at most 1000");
  }
  if (!request.page_token().empty()) SBX_RETURN_IF_ERROR(ValidateSandboxId(request.page_token()));
  std::vector<std::pair<std::string, std::shared_ptr<Entry>>> entries;
  {
    absl::MutexLock lock(&mu_);
    for (auto it = sandboxes_.upper_bound(request.page_token()); it != sandboxes_.end(); ++it) {
      entries.emplace_back(it->first, it->second);
    }
  }
  sbx::v1::ListSandboxesResponse response;
  for (const auto& [id, entry] : entries) {
    absl::StatusOr<sbx::v1::Sandbox> s = Get(id);
    if (!s.ok()) continue;  // deleted meanwhile
    bool match = request.states().empty() ||
                 std::find(request.states().begin(), request.states().end(), s->state()) !=
                     request.states().end();
    for (const auto& [key, value] : request.labels()) {
      auto it = s->labels().find(key);
      match = match && it != s->labels().end() && it->second == value;
    }
    if (!match) continue;
    if (static_cast<uint32_t>(response.sandboxes_size()) == page_size) {
      response.set_next_page_token(response.sandboxes(response.sandboxes_size() - 1).id());
      break;
    }
    *response.add_sandboxes() = std::move(*s);
  }
  return response;
}

absl::Status Manager::Delete(const std::string& id) {
  SBX_ASSIGN_OR_RETURN(std::shared_ptr<Entry> entry, Find(id));
  absl::MutexLock op(&entry->op_mu);
  std::shared_ptr<Vm> vm;
  {
    absl::MutexLock lock(&entry->mu);
    if (entry->gone) return absl::NotFoundError(absl::StrCat("no sandbox ", id));
    entry->record.mutable_sandbox()->set_state(sbx::v1::DELETING);
    vm = entry->vm;
  }
  SBX_RETURN_IF_ERROR(SaveLocked(*entry));
  SBX_LOG(INFO) << "[" << id << "] deleting";
  if (vm != nullptr) vm->Kill();
  std::string key;
  {
    absl::MutexLock lock(&entry->mu);
    entry->vm.reset();
    entry->gone = true;
    key = entry->record.idempotency_key();
  }
  absl::Status removed = store_.RemoveSandbox(id);
  absl::MutexLock lock(&mu_);
  sandboxes_.erase(id);
  if (!key.empty()) idempotency_.erase(key);
  return removed;
}

absl::Status Manager::SleepLocked(Entry& entry) {
  std::shared_ptr<Vm> vm;
  std::string id;
  {
    absl::MutexLock lock(&entry.mu);
    id = entry.record.sandbox().id();
    vm = entry.vm;
    if (vm == nullptr) return absl::OkStatus();
    entry.record.mutable_sandbox()->set_state(sbx::v1::PAUSING);
  }
  SBX_RETURN_IF_ERROR(SaveLocked(entry));
  const absl::Time start = absl::Now();
  absl::Status slept = vm->Sleep(absl::StrCat(store_.SandboxDir(id), "/snapshot"));
  if (!slept.ok()) {
    std::string why;
    bool alive = vm->Alive(&why);
    {
      absl::MutexLock lock(&entry.mu);
      entry.record.mutable_sandbox()->set_state(alive ? sbx::v1::RUNNING : sbx::v1::SLEEPING);
      if (!alive) {
        entry.vm.reset();
        entry.record.set_vmm_pid(0);
        entry.record.set_has_snapshot(false);
      }
    }
    absl::Status saved = SaveLocked(entry);
    if (!saved.ok()) SBX_LOG(WARNING) << "[" << id << "] " << saved;
    absl::MutexLock lock(&mu_);
    ++stats_.sleep_failures;
    SBX_LOG(WARNING) << "[" << id << "] sleep failed: " << slept;
    return Annotate(slept, "putting the sandbox to sleep");
  }
  {
    absl::MutexLock lock(&entry.mu);
    entry.vm.reset();
    entry.record.mutable_sandbox()->set_state(sbx::v1::SLEEPING);
    entry.record.set_has_snapshot(true);
    entry.record.set_vmm_pid(0);
    entry.record.set_vmm_start_ticks(0);
  }
  SBX_RETURN_IF_ERROR(SaveLocked(entry));
  absl::MutexLock lock(&mu_);
  ++stats_.sleeps;
  SBX_LOG(INFO) << "[" << id << "] asleep after " << absl::FormatDuration(absl::Now() - start);
  return absl::OkStatus();
}

absl::Status Manager::WakeLocked(Entry& entry) {
  SandboxRecord record;
  {
    absl::MutexLock lock(&entry.mu);
    if (entry.vm != nullptr) return absl::OkStatus();
    record = entry.record;
  }
  SBX_RETURN_IF_ERROR(CheckAdmission(record.sandbox().memory_mib(), &entry));
  const std::string& id = record.sandbox().id();
  const bool own = record.has_snapshot();
  {
    absl::MutexLock lock(&entry.mu);
    entry.record.mutable_sandbox()->set_state(sbx::v1::WAKING);
  }
  SBX_RETURN_IF_ERROR(SaveLocked(entry));
  const absl::Time start = absl::Now();
  absl::StatusOr<std::unique_ptr<Vm>> vm = backend_->Start(SpecFor(record, own));
  if (!vm.ok()) {
    {
      absl::MutexLock lock(&entry.mu);
      entry.record.mutable_sandbox()->set_state(sbx::v1::SLEEPING);
    }
    absl::Status saved = SaveLocked(entry);
    if (!saved.ok()) SBX_LOG(WARNING) << "[" << id << "] " << saved;
    absl::MutexLock lock(&mu_);
    ++stats_.wake_failures;
    SBX_LOG(WARNING) << "[" << id << "] wake failed: " << vm.status();
    return Annotate(vm.status(), "waking the sandbox");
  }
  {
    absl::MutexLock lock(&entry.mu);
    entry.vm = std::move(*vm);
    const VmHandle handle = entry.vm->handle();
    entry.record.set_vmm_pid(handle.pid);
    entry.record.set_vmm_start_ticks(handle.start_ticks);
    entry.record.mutable_sandbox()->set_state(sbx::v1::RUNNING);
    // From now on its disk moves on from the snapshot: if this VMM dies,
    // the sandbox restarts from the template with its disk instead.
    entry.record.set_has_snapshot(false);
    entry.record.mutable_sandbox()->set_wakes(entry.record.sandbox().wakes() + 1);
    entry.last_active = absl::Now();
  }
  SBX_RETURN_IF_ERROR(SaveLocked(entry));
  absl::MutexLock lock(&mu_);
  ++stats_.wakes;
  ++stats_.restores;
  stats_.wake_seconds.Observe(absl::ToDoubleSeconds(absl::Now() - start));
  SBX_LOG(INFO) << "[" << id << "] awake after " << absl::FormatDuration(absl::Now() - start)
                << (own ? " (from its snapshot)" : " (restarted from its template with its disk)");
  return absl::OkStatus();
}

absl::StatusOr<sbx::v1::Sandbox> Manager::Sleep(const std::string& id) {
  SBX_ASSIGN_OR_RETURN(std::shared_ptr<Entry> entry, Find(id));
  {
    absl::MutexLock op(&entry->op_mu);
    {
      absl::MutexLock lock(&entry->mu);
      if (entry->gone) return absl::NotFoundError(absl::StrCat("no sandbox ", id));
      const SandboxState state = entry->record.sandbox().state();
      if (state == sbx::v1::FAILED) {
        return absl::FailedPreconditionError(absl::StrCat(
            "sandbox ", id, " failed (", entry->record.sandbox().failure(), "): only Delete works"));
      }
      if (entry->execs > 0) {
        return absl::FailedPreconditionError(absl::StrCat(
            "sandbox ", id, " has ", entry->execs,
            " exec(s) streaming: wait for them or cancel them before Sleep"));
      }
    }
    SBX_RETURN_IF_ERROR(SleepLocked(*entry));
  }
  return Get(id);
}

absl::StatusOr<sbx::v1::Sandbox> Manager::Wake(const std::string& id) {
  SBX_ASSIGN_OR_RETURN(std::unique_ptr<Lease> lease, Acquire(id, false));
  lease.reset();
  return Get(id);
}

absl::StatusOr<std::unique_ptr<Manager::Lease>> Manager::Acquire(const std::string& id,
                                                                 bool exec) {
  SBX_ASSIGN_OR_RETURN(std::shared_ptr<Entry> entry, Find(id));
  absl::MutexLock op(&entry->op_mu);
  {
    absl::MutexLock lock(&entry->mu);
    if (entry->gone) return absl::NotFoundError(absl::StrCat("no sandbox ", id));
    if (entry->record.sandbox().state() == sbx::v1::FAILED) {
      return absl::FailedPreconditionError(absl::StrCat(
          "sandbox ", id, " failed (", entry->record.sandbox().failure(), "): only Delete works"));
    }
  }
  SBX_RETURN_IF_ERROR(WakeLocked(*entry));
  std::shared_ptr<Vm> vm;
  {
    absl::MutexLock lock(&entry->mu);
    ++entry->leases;
    if (exec) ++entry->execs;
    entry->last_active = absl::Now();
    vm = entry->vm;
  }
  return std::unique_ptr<Lease>(new Lease(this, entry, std::move(vm), exec));
}

absl::StatusOr<sbx::v1::Sandbox> Manager::SetTimeouts(const sbx::v1::SetTimeoutsRequest& request) {
  SBX_ASSIGN_OR_RETURN(std::shared_ptr<Entry> entry, Find(request.id()));
  if (request.idle_timeout().seconds() < 0 || request.ttl().seconds() < 0) {
    return absl::InvalidArgumentError("timeouts must not be negative");
  }
  absl::MutexLock op(&entry->op_mu);
  {
    absl::MutexLock lock(&entry->mu);
    if (entry->gone) return absl::NotFoundError(absl::StrCat("no sandbox ", request.id()));
    sbx::v1::Sandbox& s = *entry->record.mutable_sandbox();
    if (request.has_idle_timeout()) *s.mutable_idle_timeout() = request.idle_timeout();
    if (request.has_ttl()) {
      *s.mutable_ttl() = request.ttl();
      if (FromProto(request.ttl()) > absl::ZeroDuration()) {
        *s.mutable_expires_at() = ToProto(absl::Now() + FromProto(request.ttl()));
      } else {
        s.clear_expires_at();
      }
    }
  }
  SBX_RETURN_IF_ERROR(SaveLocked(*entry));
  return Get(request.id());
}

ManagerStats Manager::Stats() {
  std::vector<std::shared_ptr<Entry>> entries;
  ManagerStats stats;
  {
    absl::MutexLock lock(&mu_);
    stats = stats_;
    for (const auto& [id, e] : sandboxes_) entries.push_back(e);
  }
  for (const auto& e : entries) {
    absl::MutexLock lock(&e->mu);
    ++stats.sandboxes_by_state[e->record.sandbox().state()];
  }
  return stats;
}

// ---------------------------------------------------------------- housekeeping

void Manager::Housekeep() {
  std::vector<std::shared_ptr<Entry>> entries;
  {
    absl::MutexLock lock(&mu_);
    for (const auto& [id, e] : sandboxes_) entries.push_back(e);
  }
  const absl::Time now = absl::Now();
  for (const auto& entry : entries) {
    // A sandbox in a transition is busy, not idle.
    if (!entry->op_mu.TryLock()) continue;
    std::string id;
    bool expired = false, idle = false, dead = false;
    std::string why;
    {
      absl::MutexLock lock(&entry->mu);
      const sbx::v1::Sandbox& s = entry->record.sandbox();
      id = s.id();
      if (!entry->gone) {
        expired = s.has_expires_at() && FromProto(s.expires_at()) <= now;
        if (entry->vm != nullptr) {
          dead = !entry->vm->Alive(&why);
          const absl::Duration idle_timeout = FromProto(s.idle_timeout());
          idle = !dead && entry->leases == 0 && idle_timeout > absl::ZeroDuration() &&
                 now - entry->last_active >= idle_timeout;
        }
      }
    }
    if (dead && absl::StrContains(why, "SIGSYS")) {
      // A seccomp violation: the VMM did something its allowlist forbids
      // (a bug, or a guest that took it over). Not restarted: a person
      // looks at it; Delete works.
      FailLocked(*entry, absl::StrCat("its VMM was killed by seccomp (", why,
                                      "): a forbidden system call"));
      absl::MutexLock lock(&mu_);
      ++stats_.vmm_deaths;
    } else if (dead) {
      // Its files are on its disk; its processes are gone. It restarts
      // from the template with that disk on its next use.
      SBX_LOG(WARNING) << "[" << id << "] its VMM ended unexpectedly (" << why
                       << "): it restarts from its template with its files on next use";
      {
        absl::MutexLock lock(&entry->mu);
        entry->vm.reset();
        entry->record.mutable_sandbox()->set_state(sbx::v1::SLEEPING);
        entry->record.set_vmm_pid(0);
        entry->record.set_has_snapshot(false);
      }
      absl::Status saved = SaveLocked(*entry);
      if (!saved.ok()) SBX_LOG(WARNING) << "[" << id << "] " << saved;
      absl::MutexLock lock(&mu_);
      ++stats_.vmm_deaths;
    } else if (idle) {
      SBX_LOG(INFO) << "[" << id << "] idle: going to sleep";
      (void)SleepLocked(*entry);
    }
    entry->op_mu.Unlock();
    if (expired) {
      SBX_LOG(INFO) << "[" << id << "] its ttl ran out: deleting";
      absl::Status deleted = Delete(id);
      if (!deleted.ok() && !absl::IsNotFound(deleted)) {
        SBX_LOG(WARNING) << "[" << id << "] delete after ttl: " << deleted;
      }
    }
  }
}

void Manager::HousekeepingLoop() {
  absl::MutexLock lock(&mu_);
  while (!stopping_) {
    if (mu_.AwaitWithTimeout(absl::Condition(&stopping_), options_.housekeeping_interval)) break;
    mu_.Unlock();
    Housekeep();
    mu_.Lock();
  }
}

}  // namespace sbx::sandboxd
