#include "base/test_facility.h"

#include <fcntl.h>
#include <linux/kvm.h>
#include <sys/ioctl.h>
#include <sys/stat.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <string>

#include "base/unique_fd.h"

namespace sbx::testing {
namespace {

// True if the running kernel registered a "kvm" misc device, i.e. a
// /dev/kvm node could work here at all.
bool KernelHasKvmDevice() {
  std::ifstream misc("/proc/misc");
  std::string minor, name;
  while (misc >> minor >> name) {
    if (name == "kvm") return true;
  }
  return false;
}

}  // namespace

Verdict Decide(const FacilityCheck& check, bool in_ci) {
  if (check.available) return Verdict::kRun;
  if (in_ci && !check.machine_lacks_it) return Verdict::kFail;
  return Verdict::kSkip;
}

bool InCi() {
  const char* ci = std::getenv("CI");
  return ci != nullptr && std::strcmp(ci, "true") == 0;
}

FacilityCheck CheckKvm() {
  FacilityCheck check;
  if (!KernelHasKvmDevice()) {
    check.machine_lacks_it = true;
    check.reason =
        "this machine has no KVM: the kernel registered no kvm device "
        "(/proc/misc has no 'kvm'; on a PVM guest dmesg says 'kvm-pvm: this "
        "kernel is itself a kvm-pvm guest'). Run on hardware KVM or a host "
        "whose kernel exposes /dev/kvm";
    return check;
  }
  UniqueFd kvm(::open("/dev/kvm", O_RDWR | O_CLOEXEC));
  if (!kvm.valid()) {
    int err = errno;
    check.reason = std::string("open /dev/kvm: ") + std::strerror(err) +
                   (err == EACCES ? " (add the user to group kvm)" : "") +
                   (err == ENOENT ? " (the kernel has KVM: create the node "
                                    "with 'mknod /dev/kvm c 10 232')"
                                  : "");
    return check;
  }
  int version = ::ioctl(kvm.get(), KVM_GET_API_VERSION, 0);
  if (version != KVM_API_VERSION) {
    check.reason = "/dev/kvm speaks API version " + std::to_string(version) +
                   ", want " + std::to_string(KVM_API_VERSION);
    return check;
  }
  UniqueFd vm(::ioctl(kvm.get(), KVM_CREATE_VM, 0));
  if (!vm.valid()) {
    check.reason = std::string("KVM_CREATE_VM: ") + std::strerror(errno);
    return check;
  }
  check.available = true;
  return check;
}

std::string ReadFileToString(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

std::string ImageCacheDir() {
  const char* cache = std::getenv("SBX_CACHE");
  return cache != nullptr && *cache != '\0' ? cache : "/var/cache/sbx";
}

FacilityCheck CheckImage(const std::string& relative) {
  FacilityCheck check;
  std::string path = ImageCacheDir() + "/" + relative;
  struct stat st;
  if (::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode) && st.st_size > 0) {
    check.available = true;
    return check;
  }
  std::string image = relative.substr(0, relative.find('/'));
  check.reason = "guest image " + path + " is not built: run scripts/setup "
                 "(or images/" + image + "/build)";
  return check;
}

}  // namespace sbx::testing
