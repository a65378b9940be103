// Snapshot and restore of a running test guest in a real KVM VM (label
// kvm): a computation paused and snapshotted in the middle finishes, after
// a restore, exactly as an uninterrupted run does; one snapshot restores
// several times.
#include <fcntl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "base/test_facility.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "vmm/boot/cpu_setup.h"
#include "vmm/machine.h"
#include "vmm/snapshot/format.h"
#include "vmm/snapshot/working_set.h"
#include "vmm/testing/guests/guests.h"

namespace sbx::vmm {
namespace {

using ::testing::HasSubstr;

// guest_compute.c: its result table.
constexpr GuestAddress kResults = 0x400000;
constexpr size_t kResultBytes = 4096 * 8;

std::string Temp(const std::string& name) {
  return ::testing::TempDir() + "snapshot_kvm_" + std::to_string(::getpid()) +
         "_" + name;
}

MachineConfig ComputeConfig(const std::string& console) {
  MachineConfig c;
  c.kernel = guests::GuestPath("compute");
  c.memory_mib = 64;
  c.console = console;
  return c;
}

std::vector<uint8_t> Results(const Machine& m) {
  std::vector<uint8_t> bytes(kResultBytes);
  EXPECT_TRUE(m.memory().Read(kResults, bytes).ok());
  return bytes;
}

// All of guest RAM, as the VMM sees it.
std::vector<uint8_t> Ram(const Machine& m) {
  std::vector<uint8_t> bytes(m.memory().ram_bytes());
  for (const MemoryRegion& r : m.memory().regions()) {
    std::memcpy(bytes.data() + r.file_offset, r.host, r.size);
  }
  return bytes;
}

// Waits (bounded) until the console at `path` shows `text`.
bool WaitForConsole(const std::string& path, const std::string& text) {
  for (int i = 0; i < 300000; ++i) {
    if (testing::ReadFileToString(path).find(text) != std::string::npos) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return false;
}

class SnapshotKvmTest : public ::testing::Test {
 protected:
  // The uninterrupted run (once for all tests): its console and table.
  void SetUp() override {
    SBX_REQUIRE(testing::CheckKvm());
    if (!reference_console_.empty()) return;
    const std::string console = Temp("reference.log");
    auto m = Machine::Create(ComputeConfig(console));
    ASSERT_TRUE(m.ok()) << m.status();
    MachineExit exit = (*m)->Run();
    ASSERT_EQ(exit.kind, ExitKind::kGuestReset) << exit.description;
    reference_console_ = testing::ReadFileToString(console);
    reference_results_ = Results(**m);
    ASSERT_THAT(reference_console_, HasSubstr("compute: step 15"));
    ASSERT_THAT(reference_console_, HasSubstr("compute: done sum="));
  }

  // Runs the guest, pauses it once it printed step 2, snapshots it into
  // `dir`, resumes it and lets it finish. Returns the console up to the
  // pause.
  std::string RunAndSnapshot(const std::string& dir) {
    const std::string console = Temp("snapshotted.log");
    auto m = Machine::Create(ComputeConfig(console));
    EXPECT_TRUE(m.ok()) << m.status();
    if (!m.ok()) return "";
    MachineExit exit;
    std::thread runner([&] { exit = (*m)->Run(); });
    std::string before;
    if (WaitForConsole(console, "compute: step 2 ")) {
      absl::Status s = (*m)->Pause();
      EXPECT_TRUE(s.ok()) << s;
      before = testing::ReadFileToString(console);
      // A paused guest writes nothing.
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
      EXPECT_EQ(testing::ReadFileToString(console), before);
      s = (*m)->Snapshot(dir);
      EXPECT_TRUE(s.ok()) << s;
      EXPECT_FALSE((*m)->Pause().ok());  // already paused
      s = (*m)->Resume();
      EXPECT_TRUE(s.ok()) << s;
    } else {
      ADD_FAILURE() << "the guest never reached step 2";
      (*m)->Stop();
    }
    runner.join();
    // Paused and resumed, the original finishes as if nothing happened.
    EXPECT_EQ(exit.kind, ExitKind::kGuestReset) << exit.description;
    EXPECT_EQ(testing::ReadFileToString(console), reference_console_);
    EXPECT_EQ(Results(**m), reference_results_);
    return before;
  }

  // Pauses `m` once `console` shows `text`; returns the console then.
  static std::string PauseAt(Machine& m, const std::string& console,
                             const std::string& text) {
    EXPECT_TRUE(WaitForConsole(console, text)) << text;
    absl::Status s = m.Pause();
    EXPECT_TRUE(s.ok()) << s;
    return testing::ReadFileToString(console);
  }

  static std::string reference_console_;
  static std::vector<uint8_t> reference_results_;
};

std::string SnapshotKvmTest::reference_console_;
std::vector<uint8_t> SnapshotKvmTest::reference_results_;

TEST_F(SnapshotKvmTest, RestoredComputationFinishesLikeAnUninterruptedRun) {
  const std::string dir = Temp("snap");
  const std::string before = RunAndSnapshot(dir);
  ASSERT_THAT(before, HasSubstr("compute: step 2 "));
  ASSERT_THAT(before, ::testing::Not(HasSubstr("compute: done")));

  // The memory file is sparse: 64 MiB of RAM, little of it written.
  struct stat st;
  ASSERT_EQ(::stat((dir + "/memory").c_str(), &st), 0);
  EXPECT_EQ(st.st_size, 64 << 20);
  EXPECT_LT(st.st_blocks * 512, 8 << 20);

  RestoreOptions options;
  options.console = Temp("restored.log");
  ::unlink(options.console->c_str());
  auto m = Machine::Restore(dir, options);
  ASSERT_TRUE(m.ok()) << m.status();
  MachineExit exit = (*m)->Run();
  EXPECT_EQ(exit.kind, ExitKind::kGuestReset) << exit.description;
  EXPECT_EQ(before + testing::ReadFileToString(*options.console),
            reference_console_);
  EXPECT_EQ(Results(**m), reference_results_);
}

TEST_F(SnapshotKvmTest, OneSnapshotRestoresThreeTimesAtOnce) {
  const std::string dir = Temp("snap3");
  const std::string before = RunAndSnapshot(dir);
  ASSERT_THAT(before, HasSubstr("compute: step 2 "));

  constexpr int kClones = 3;
  std::vector<std::unique_ptr<Machine>> clones;
  std::vector<std::string> consoles;
  for (int i = 0; i < kClones; ++i) {
    RestoreOptions options;
    consoles.push_back(Temp("clone" + std::to_string(i) + ".log"));
    ::unlink(consoles.back().c_str());
    options.console = consoles.back();
    auto m = Machine::Restore(dir, options);
    ASSERT_TRUE(m.ok()) << m.status();
    clones.push_back(*std::move(m));
  }
  std::vector<MachineExit> exits(kClones);
  std::vector<std::thread> runners;
  for (int i = 0; i < kClones; ++i) {
    runners.emplace_back([&, i] { exits[i] = clones[i]->Run(); });
  }
  for (std::thread& t : runners) t.join();
  for (int i = 0; i < kClones; ++i) {
    EXPECT_EQ(exits[i].kind, ExitKind::kGuestReset) << i << ": " << exits[i].description;
    EXPECT_EQ(before + testing::ReadFileToString(consoles[i]), reference_console_) << i;
    EXPECT_EQ(Results(*clones[i]), reference_results_) << i;
  }
}

TEST_F(SnapshotKvmTest, ACorruptSnapshotIsRefusedWithAClearError) {
  const std::string dir = Temp("snap_corrupt");
  ASSERT_THAT(RunAndSnapshot(dir), HasSubstr("compute: step 2 "));
  // Truncate the memory file: it no longer matches the snapshot's RAM.
  ASSERT_EQ(::truncate((dir + "/memory").c_str(), 4096), 0);
  RestoreOptions options;
  options.console = Temp("corrupt.log");
  auto m = Machine::Restore(dir, options);
  ASSERT_FALSE(m.ok());
  EXPECT_THAT(m.status().message(), HasSubstr("memory"));
}

// A snapshot records the KVM features its guest was shown; one whose guest
// makes hypercalls is refused where they never return (PVM), not restored
// into a guest that would hang at its first IPI.
TEST_F(SnapshotKvmTest, ASnapshotCarriesItsGuestsKvmFeatures) {
  const std::string dir = Temp("snap_features");
  ASSERT_THAT(RunAndSnapshot(dir), HasSubstr("compute: step 2 "));
  absl::StatusOr<vmstate::v1::VmState> state = snapshot::ReadVmState(dir + "/vmstate");
  ASSERT_TRUE(state.ok()) << state.status();
  ASSERT_TRUE(state->has_kvm_features());
  const HostKvmTraits host = HostKvmTraitsFor(HostKvmIsPvm());
  EXPECT_TRUE(CheckGuestKvmFeatures(state->kvm_features(), host).ok());
  if (HostKvmIsPvm()) {
    EXPECT_EQ(state->kvm_features() & kKvmHypercallFeatures, 0u);
  }

  // The same snapshot, as if made where the guest was shown PV send-IPI.
  state->set_kvm_features(state->kvm_features() | kKvmFeaturePvSendIpi);
  ASSERT_TRUE(snapshot::WriteVmState(dir + "/vmstate", *state).ok());
  RestoreOptions options;
  options.console = Temp("features.log");
  ::unlink(options.console->c_str());
  auto m = Machine::Restore(dir, options);
  if (HostKvmIsPvm()) {
    ASSERT_FALSE(m.ok());
    EXPECT_TRUE(absl::IsFailedPrecondition(m.status())) << m.status();
    EXPECT_THAT(m.status().message(), HasSubstr("PVM"));
  } else {
    ASSERT_TRUE(m.ok()) << m.status();
    EXPECT_EQ((*m)->Run().kind, ExitKind::kGuestReset);
  }
}

// The diff snapshot of a moment, restored over its base, is the same VM as
// a full snapshot of that moment: same RAM, and it finishes the
// computation like an uninterrupted run. Taken from a booted VM (tracking
// from its first full snapshot) and from a restored one (tracking from the
// restore).
TEST_F(SnapshotKvmTest, DiffOverBaseRestoresLikeAFullSnapshot) {
  const std::string base = Temp("diff_base");
  const std::string diff = Temp("diff_d");
  const std::string full = Temp("diff_f");
  const std::string console = Temp("diff_orig.log");
  auto m = Machine::Create(ComputeConfig(console));
  ASSERT_TRUE(m.ok()) << m.status();
  MachineExit exit;
  std::thread runner([&] { exit = (*m)->Run(); });
  const std::string base_console = PauseAt(**m, console, "compute: step 2 ");
  absl::StatusOr<SnapshotResult> base_result =
      (*m)->TakeSnapshot(base, SnapshotKind::kFull);
  ASSERT_TRUE(base_result.ok()) << base_result.status();
  ASSERT_TRUE((*m)->Resume().ok());
  const std::string before = PauseAt(**m, console, "compute: step 5 ");
  // No base given, a wrong one: refused.
  EXPECT_FALSE((*m)->TakeSnapshot(diff, SnapshotKind::kDiff, "").ok());
  EXPECT_TRUE(absl::IsFailedPrecondition(
      (*m)->TakeSnapshot(diff, SnapshotKind::kDiff, Temp("")).status()));
  absl::StatusOr<SnapshotResult> diff_result =
      (*m)->TakeSnapshot(diff, SnapshotKind::kDiff, base);
  ASSERT_TRUE(diff_result.ok()) << diff_result.status();
  absl::StatusOr<SnapshotResult> full_result =
      (*m)->TakeSnapshot(full, SnapshotKind::kFull);
  ASSERT_TRUE(full_result.ok()) << full_result.status();
  ASSERT_TRUE((*m)->Resume().ok());
  runner.join();
  EXPECT_EQ(exit.kind, ExitKind::kGuestReset) << exit.description;
  EXPECT_EQ(testing::ReadFileToString(console), reference_console_);
  // The diff holds the pages the computation wrote: a few, not all of RAM.
  std::printf("diff: %" PRIu64 " pages, %" PRIu64 " KiB; full: %" PRIu64 " KiB\n",
              diff_result->memory_pages, diff_result->memory_data_bytes >> 10,
              full_result->memory_data_bytes >> 10);
  EXPECT_GT(diff_result->memory_pages, 0u);
  EXPECT_LT(diff_result->memory_pages, 1024u);
  EXPECT_LT(diff_result->memory_data_bytes, full_result->memory_data_bytes);

  auto check = [&](const std::string& diff_dir, const std::string& full_dir,
                   const std::string& console_before, const std::string& tag) {
    RestoreOptions options;
    options.console = Temp(tag + "_full.log");
    ::unlink(options.console->c_str());
    auto from_full = Machine::Restore(full_dir, options);
    ASSERT_TRUE(from_full.ok()) << from_full.status();
    options.console = Temp(tag + "_diff.log");
    ::unlink(options.console->c_str());
    auto from_diff = Machine::Restore(diff_dir, options);
    ASSERT_TRUE(from_diff.ok()) << from_diff.status();
    EXPECT_TRUE(Ram(**from_diff) == Ram(**from_full)) << tag;
    MachineExit e = (*from_diff)->Run();
    EXPECT_EQ(e.kind, ExitKind::kGuestReset) << e.description;
    EXPECT_EQ(console_before + testing::ReadFileToString(*options.console),
              reference_console_) << tag;
    EXPECT_EQ(Results(**from_diff), reference_results_) << tag;
  };
  check(diff, full, before, "booted");

  // A restored VM tracks against the snapshot it came from.
  RestoreOptions options;
  const std::string restored_console = Temp("diff_restored.log");
  ::unlink(restored_console.c_str());
  options.console = restored_console;
  auto r = Machine::Restore(base, options);
  ASSERT_TRUE(r.ok()) << r.status();
  std::thread r_runner([&] { exit = (*r)->Run(); });
  const std::string r_before = PauseAt(**r, restored_console, "compute: step 9 ");
  const std::string diff2 = Temp("diff_d2");
  const std::string full2 = Temp("diff_f2");
  ASSERT_TRUE((*r)->TakeSnapshot(diff2, SnapshotKind::kDiff, base).ok());
  ASSERT_TRUE((*r)->TakeSnapshot(full2, SnapshotKind::kFull).ok());
  (*r)->Stop();
  r_runner.join();
  ASSERT_TRUE(reference_console_.starts_with(base_console + r_before));
  check(diff2, full2, base_console + r_before, "restored");

  // A diff whose base was replaced is refused, saying so.
  options.diff_base_dir = full;
  auto wrong = Machine::Restore(diff, options);
  ASSERT_FALSE(wrong.ok());
  EXPECT_TRUE(absl::IsFailedPrecondition(wrong.status())) << wrong.status();
  EXPECT_THAT(wrong.status().message(), HasSubstr("not the snapshot"));
}

// Host page faults of this process so far (minor + major, every thread,
// those that ended included).
uint64_t HostFaults() {
  struct rusage ru;
  ::getrusage(RUSAGE_SELF, &ru);
  return static_cast<uint64_t>(ru.ru_minflt + ru.ru_majflt);
}

int64_t NowUs() {
  return std::chrono::duration_cast<std::chrono::microseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// A template's working set, recorded once after a restore, is pre-faulted
// by later restores: their guests run with fewer host page faults, and
// still compute what an uninterrupted run computes.
TEST_F(SnapshotKvmTest, WorkingSetPrefetchCutsHostFaultsAfterResume) {
  const std::string dir = Temp("ws");
  const std::string before = RunAndSnapshot(dir);
  ASSERT_THAT(before, HasSubstr("compute: step 2 "));

  RestoreOptions record;
  record.console = Temp("ws_record.log");
  ::unlink(record.console->c_str());
  absl::StatusOr<WorkingSetResult> recorded =
      Machine::RecordWorkingSet(dir, 200, record);
  ASSERT_TRUE(recorded.ok()) << recorded.status();
  std::printf("working set: %" PRIu64 " pages read, %" PRIu64
              " written, %" PRIu64 " ranges\n",
              recorded->read_pages, recorded->written_pages, recorded->ranges);
  EXPECT_GT(recorded->read_pages + recorded->written_pages, 0u);
  // The results table (8 pages) is written after the snapshot.
  EXPECT_GE(recorded->written_pages, 8u);
  EXPECT_LT(recorded->read_pages + recorded->written_pages, 64u * 256);
  absl::StatusOr<snapshot::WorkingSet> file =
      snapshot::ReadWorkingSet(dir + "/workingset", 64 << 20);
  ASSERT_TRUE(file.ok()) << file.status();

  struct Sample {
    uint64_t run_faults = 0;    // during Run(): after resume
    uint64_t total_faults = 0;  // Restore() + Run()
    int64_t restore_us = 0;
    int64_t total_us = 0;
    uint64_t prefetched = 0;
  };
  auto restore_and_run = [&](RestoreOptions::Prefetch prefetch,
                             const std::string& tag) -> Sample {
    Sample s;
    RestoreOptions options;
    options.prefetch = prefetch;
    options.console = Temp("ws_" + tag + ".log");
    ::unlink(options.console->c_str());
    const int64_t t0 = NowUs();
    const uint64_t f0 = HostFaults();
    auto m = Machine::Restore(dir, options);
    EXPECT_TRUE(m.ok()) << m.status();
    if (!m.ok()) return s;
    const uint64_t f1 = HostFaults();
    s.restore_us = NowUs() - t0;
    MachineExit exit = (*m)->Run();
    s.run_faults = HostFaults() - f1;
    s.total_faults = HostFaults() - f0;
    s.total_us = NowUs() - t0;
    (*m)->WaitForPrefetch();
    s.prefetched = (*m)->prefetched_pages();
    EXPECT_EQ(exit.kind, ExitKind::kGuestReset) << tag << ": " << exit.description;
    EXPECT_EQ(before + testing::ReadFileToString(*options.console),
              reference_console_) << tag;
    EXPECT_EQ(Results(**m), reference_results_) << tag;
    return s;
  };
  using Prefetch = RestoreOptions::Prefetch;
  (void)restore_and_run(Prefetch::kOff, "warmup");  // thread stacks, caches
  Sample off{~0ull, ~0ull, 0, 0, 0};
  Sample on{~0ull, ~0ull, 0, 0, 0};
  auto keep_min = [](Sample& best, const Sample& s) {
    if (s.run_faults < best.run_faults) best = s;
  };
  for (int round = 0; round < 2; ++round) {
    keep_min(off, restore_and_run(Prefetch::kOff, "off"));
    keep_min(on, restore_and_run(Prefetch::kBeforeRun, "on"));
  }
  const Sample background = restore_and_run(Prefetch::kBackground, "bg");
  std::printf("no prefetch:  %" PRIu64 " faults after resume (%" PRIu64
              " in all), restore %" PRId64 " us, restore+run %" PRId64 " us\n",
              off.run_faults, off.total_faults, off.restore_us, off.total_us);
  std::printf("prefetch:     %" PRIu64 " faults after resume (%" PRIu64
              " in all), restore %" PRId64 " us, restore+run %" PRId64
              " us, %" PRIu64 " pages prefetched\n",
              on.run_faults, on.total_faults, on.restore_us, on.total_us,
              on.prefetched);
  std::printf("background:   %" PRIu64 " faults after resume (%" PRIu64
              " in all), restore %" PRId64 " us, restore+run %" PRId64
              " us, %" PRIu64 " pages prefetched\n",
              background.run_faults, background.total_faults,
              background.restore_us, background.total_us, background.prefetched);
  EXPECT_EQ(off.prefetched, 0u);
  EXPECT_EQ(on.prefetched, recorded->read_pages + recorded->written_pages);
  EXPECT_EQ(background.prefetched, on.prefetched);
  EXPECT_LT(on.run_faults, off.run_faults);

  // A working set of another snapshot is ignored: nothing prefetched, the
  // restore still works.
  file->snapshot_id = "not this snapshot";
  ASSERT_TRUE(snapshot::WriteWorkingSet(dir + "/workingset", *file).ok());
  EXPECT_EQ(restore_and_run(Prefetch::kBeforeRun, "foreign").prefetched, 0u);
  // A new snapshot in the directory drops the old working set.
  ASSERT_THAT(RunAndSnapshot(dir), HasSubstr("compute: step 2 "));
  EXPECT_NE(::access((dir + "/workingset").c_str(), F_OK), 0);
}

struct MappingMemory {
  uint64_t rss_kib = 0;
  uint64_t pss_kib = 0;
  uint64_t shared_kib = 0;  // pages mapped more than once
};

// Rss, Pss and Shared_* of the mappings of /proc/self/smaps inside
// [begin, end).
MappingMemory MeasureMapping(uintptr_t begin, uintptr_t end) {
  MappingMemory total;
  std::ifstream smaps("/proc/self/smaps");
  std::string line;
  bool inside = false;
  while (std::getline(smaps, line)) {
    unsigned long long lo, hi;
    char dash;
    std::istringstream header(line);
    if (std::isxdigit(static_cast<unsigned char>(line[0])) &&
        (header >> std::hex >> lo >> dash >> hi) && dash == '-') {
      inside = lo >= begin && hi <= end;
      continue;
    }
    if (!inside) continue;
    std::istringstream field(line);
    std::string key;
    uint64_t kib = 0;
    field >> key >> kib;
    if (key == "Rss:") total.rss_kib += kib;
    if (key == "Pss:") total.pss_kib += kib;
    // tmpfs pages count as dirty: shared is shared.
    if (key == "Shared_Clean:" || key == "Shared_Dirty:") total.shared_kib += kib;
  }
  return total;
}

// Three VMs restored from one snapshot share its clean pages: together
// they hold the pages the guests read once (PSS), not three times (RSS).
TEST_F(SnapshotKvmTest, ClonesShareTheSnapshotsCleanPages) {
  const std::string dir = Temp("share");
  ASSERT_THAT(RunAndSnapshot(dir), HasSubstr("compute: step 2 "));
  constexpr int kClones = 3;
  std::vector<std::unique_ptr<Machine>> clones;
  for (int i = 0; i < kClones; ++i) {
    RestoreOptions options;
    options.console = Temp("share" + std::to_string(i) + ".log");
    auto m = Machine::Restore(dir, options);
    ASSERT_TRUE(m.ok()) << m.status();
    clones.push_back(*std::move(m));
  }
  // Every clone runs to the end, then reads all of its RAM, as a guest
  // kernel reads its text and page cache (the test guest itself reads
  // little): each page not written is a clean page of the memory file.
  std::vector<std::thread> runners;
  for (auto& c : clones) runners.emplace_back([&c] { (void)c->Run(); });
  for (std::thread& t : runners) t.join();
  uint64_t checksum = 0;
  for (auto& c : clones) {
    const uint8_t* host = c->memory().regions()[0].host;
    for (uint64_t p = 0; p < c->memory().ram_bytes(); p += 4096) {
      checksum += *static_cast<volatile const uint8_t*>(host + p);
    }
  }
  std::printf("checksum %" PRIu64 "\n", checksum);
  MappingMemory sum;
  for (auto& c : clones) {
    const MemoryRegion& r = c->memory().regions()[0];
    MappingMemory one = MeasureMapping(reinterpret_cast<uintptr_t>(r.host),
                                       reinterpret_cast<uintptr_t>(r.host) +
                                           c->memory().ram_bytes());
    std::printf("clone: Rss %" PRIu64 " KiB, Pss %" PRIu64
                " KiB, Shared %" PRIu64 " KiB\n",
                one.rss_kib, one.pss_kib, one.shared_kib);
    EXPECT_GT(one.rss_kib, 0u);
    EXPECT_GT(one.shared_kib, one.rss_kib / 2);
    sum.rss_kib += one.rss_kib;
    sum.pss_kib += one.pss_kib;
  }
  std::printf("all clones: Rss %" PRIu64 " KiB, Pss %" PRIu64 " KiB\n",
              sum.rss_kib, sum.pss_kib);
  // Shared clean pages count a third in each clone's PSS: the sum stays
  // well below the RSS sum (equal if nothing were shared; a third if
  // everything were).
  EXPECT_LT(sum.pss_kib * 2, sum.rss_kib);
}

}  // namespace
}  // namespace sbx::vmm
