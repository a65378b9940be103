#ifndef SBX_VMM_SNAPSHOT_CRC32C_H_
#define SBX_VMM_SNAPSHOT_CRC32C_H_

#include <cstdint>
#include <span>

namespace sbx::vmm::snapshot {

// CRC-32C (Castagnoli, reflected polynomial 0x82f63b78, RFC 3720 §B.4) of
// `data`, continuing from `crc` (0 to start). Table-driven, one byte at a
// time: snapshots' state files are small.
uint32_t Crc32c(std::span<const uint8_t> data, uint32_t crc = 0);

}  // namespace sbx::vmm::snapshot

#endif  // SBX_VMM_SNAPSHOT_CRC32C_H_
