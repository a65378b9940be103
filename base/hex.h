#ifndef SBX_BASE_HEX_H_
#define SBX_BASE_HEX_H_

#include <cstdint>
#include <cstdio>
#include <string>

namespace sbx {

// "0x1f": addresses and register values in messages.
inline std::string Hex(uint64_t v) {
  char buf[24];
  std::snprintf(buf, sizeof(buf), "0x%llx", static_cast<unsigned long long>(v));
  return buf;
}

}  // namespace sbx

#endif  // SBX_BASE_HEX_H_
