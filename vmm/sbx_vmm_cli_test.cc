// Runs the sbx-vmm binary as a user would. Bad input must give one clear
// line and exit status 2 before any VM exists; that part runs anywhere.
// Booting a guest needs /dev/kvm: where there is none, sbx-vmm must say so
// and exit 1.
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

#include "base/test_facility.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "vmm/testing/guests/guests.h"

namespace sbx::vmm {
namespace {

using ::testing::HasSubstr;

struct Result {
  int status;
  std::string out;
  std::string err;
};

Result RunVmm(const std::string& args) {
  // Unique per process and call: ctest runs these cases in parallel.
  static int calls = 0;
  std::string stem = ::testing::TempDir() + "vmm_cli_" + std::to_string(::getpid()) +
                     "_" + std::to_string(calls++);
  std::string out = stem + ".out";
  std::string err = stem + ".err";
  std::string cmd = std::string(SBX_VMM_BINARY) + " " + args + " >" + out +
                    " 2>" + err + " </dev/null";
  int raw = std::system(cmd.c_str());
  Result r{WIFEXITED(raw) ? WEXITSTATUS(raw) : -1, testing::ReadFileToString(out), testing::ReadFileToString(err)};
  ::unlink(out.c_str());
  ::unlink(err.c_str());
  return r;
}

std::string TextFile() {
  std::string path = ::testing::TempDir() + "not_a_kernel.txt";
  std::ofstream(path) << std::string(8192, 'a');
  return path;
}

// A directory whose vmstate file is not one.
std::string NotASnapshot() {
  std::string dir = ::testing::TempDir() + "not_a_snapshot";
  ::mkdir(dir.c_str(), 0755);
  std::ofstream(dir + "/vmstate") << "hello";
  return dir;
}

TEST(SbxVmmCliTest, HelpPrintsUsage) {
  Result r = RunVmm("--help");
  EXPECT_EQ(r.status, 0);
  EXPECT_THAT(r.out, HasSubstr("usage: sbx-vmm --kernel FILE"));
}

TEST(SbxVmmCliTest, BadInputExitsTwoWithOneClearLine) {
  struct Case {
    std::string args;
    std::string message;
  };
  std::string kernel = guests::GuestPath("hello");
  std::vector<Case> cases = {
      {"", "--kernel is required"},
      {"--kernel /nonexistent/vmlinux", "--kernel /nonexistent/vmlinux: No such file"},
      {"--kernel " + TextFile(), "not a usable x86-64 kernel"},
      {"--kernel " + kernel + " --cpus 0", "--cpus 0: must be 1 to 32"},
      {"--kernel " + kernel + " --cpus 33", "--cpus 33: must be 1 to 32"},
      {"--kernel " + kernel + " --memory-mib 8", "the minimum is 16"},
      {"--kernel " + kernel + " --memory-mib 99999999", "more than this host's"},
      {"--kernel " + kernel + " --disk /nonexistent/disk.img", "disk /nonexistent/disk.img"},
      {"--kernel " + kernel + " --bogus", "unknown argument '--bogus'"},
      {"--restore /nonexistent/snap", "open /nonexistent/snap/vmstate"},
      {"--restore " + ::testing::TempDir() + " --cpus 2",
       "--cpus cannot be used with --restore"},
      {"--restore " + NotASnapshot(), "not an sbx vmstate file"},
  };
  for (const Case& c : cases) {
    Result r = RunVmm(c.args);
    EXPECT_EQ(r.status, 2) << c.args << "\n" << r.err;
    EXPECT_THAT(r.err, ::testing::StartsWith("sbx-vmm: ")) << c.args;
    EXPECT_THAT(r.err, HasSubstr(c.message)) << c.args;
    // One line, nothing on stdout.
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
    EXPECT_EQ(r.out, "") << c.args;
  }
}

TEST(SbxVmmCliTest, BootsAGuestOrSaysKvmIsMissing) {
  Result r = RunVmm("--kernel " + guests::GuestPath("hello") + " --memory-mib 32");
  if (testing::CheckKvm().available) {
    EXPECT_EQ(r.status, 0) << r.err;
    EXPECT_THAT(r.out, HasSubstr("sbx-guest: hello"));
    EXPECT_THAT(r.err, HasSubstr("the guest rebooted"));
  } else {
    EXPECT_EQ(r.status, 1) << r.err;
    EXPECT_THAT(r.err, HasSubstr("/dev/kvm"));
  }
}

}  // namespace
}  // namespace sbx::vmm
