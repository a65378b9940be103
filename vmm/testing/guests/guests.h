#ifndef SBX_VMM_TESTING_GUESTS_GUESTS_H_
#define SBX_VMM_TESTING_GUESTS_GUESTS_H_

#include <string>

// Where the test guests are built (SBX_GUEST_DIR is set by CMake for the
// tests that use them).
namespace sbx::vmm::guests {
inline std::string GuestPath(const std::string& name) {
  return std::string(SBX_GUEST_DIR) + "/guest_" + name;
}
}  // namespace sbx::vmm::guests

#endif  // SBX_VMM_TESTING_GUESTS_GUESTS_H_
