#ifndef SBX_VMM_VIRTIO_VSOCK_PACKET_H_
#define SBX_VMM_VIRTIO_VSOCK_PACKET_H_

#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>

namespace sbx::vmm::virtio::vsock {

// The virtio-vsock wire format (virtio 1.2 §5.10.6).

// Well-known CIDs: the host is always 2 (§5.10.4); a guest CID is 3 or more
// and fits in 32 bits (the upper 32 bits of guest_cid are reserved).
inline constexpr uint64_t kHostCid = 2;
inline constexpr uint64_t kMinGuestCid = 3;
inline constexpr uint64_t kMaxGuestCid = 0xffff'fffe;  // -1 is VMADDR_CID_ANY

// Queues (§5.10.2).
inline constexpr size_t kRxQueue = 0;
inline constexpr size_t kTxQueue = 1;
inline constexpr size_t kEventQueue = 2;

// struct virtio_vsock_hdr type and op values (§5.10.6).
inline constexpr uint16_t kTypeStream = 1;
inline constexpr uint16_t kOpRequest = 1;
inline constexpr uint16_t kOpResponse = 2;
inline constexpr uint16_t kOpRst = 3;
inline constexpr uint16_t kOpShutdown = 4;
inline constexpr uint16_t kOpRw = 5;
inline constexpr uint16_t kOpCreditUpdate = 6;
inline constexpr uint16_t kOpCreditRequest = 7;

// VIRTIO_VSOCK_SHUTDOWN_F_* (§5.10.6.5): the sender of the SHUTDOWN will
// receive (kShutdownRcv) or send (kShutdownSend) no more data.
inline constexpr uint32_t kShutdownRcv = 1;
inline constexpr uint32_t kShutdownSend = 2;

// struct virtio_vsock_event id (§5.10.6.7).
inline constexpr uint32_t kEventTransportReset = 0;

// struct virtio_vsock_hdr, decoded. Every field is little-endian on the
// wire, like the host.
struct PacketHeader {
  static constexpr size_t kSize = 44;

  uint64_t src_cid = 0;
  uint64_t dst_cid = 0;
  uint32_t src_port = 0;
  uint32_t dst_port = 0;
  uint32_t len = 0;
  uint16_t type = 0;
  uint16_t op = 0;
  uint32_t flags = 0;
  uint32_t buf_alloc = 0;
  uint32_t fwd_cnt = 0;

  // Field offsets in the packed wire struct.
  static constexpr size_t kSrcCid = 0;
  static constexpr size_t kDstCid = 8;
  static constexpr size_t kSrcPort = 16;
  static constexpr size_t kDstPort = 20;
  static constexpr size_t kLen = 24;
  static constexpr size_t kType = 28;
  static constexpr size_t kOp = 30;
  static constexpr size_t kFlags = 32;
  static constexpr size_t kBufAlloc = 36;
  static constexpr size_t kFwdCnt = 40;

  static PacketHeader Decode(std::span<const uint8_t, kSize> raw) {
    PacketHeader h;
    Get(raw, kSrcCid, h.src_cid);
    Get(raw, kDstCid, h.dst_cid);
    Get(raw, kSrcPort, h.src_port);
    Get(raw, kDstPort, h.dst_port);
    Get(raw, kLen, h.len);
    Get(raw, kType, h.type);
    Get(raw, kOp, h.op);
    Get(raw, kFlags, h.flags);
    Get(raw, kBufAlloc, h.buf_alloc);
    Get(raw, kFwdCnt, h.fwd_cnt);
    return h;
  }

  std::array<uint8_t, kSize> Encode() const {
    std::array<uint8_t, kSize> raw{};
    Put(raw, kSrcCid, src_cid);
    Put(raw, kDstCid, dst_cid);
    Put(raw, kSrcPort, src_port);
    Put(raw, kDstPort, dst_port);
    Put(raw, kLen, len);
    Put(raw, kType, type);
    Put(raw, kOp, op);
    Put(raw, kFlags, flags);
    Put(raw, kBufAlloc, buf_alloc);
    Put(raw, kFwdCnt, fwd_cnt);
    return raw;
  }

 private:
  template <typename T>
  static void Get(std::span<const uint8_t, kSize> raw, size_t at, T& v) {
    std::memcpy(&v, raw.data() + at, sizeof(T));
  }
  template <typename T>
  static void Put(std::array<uint8_t, kSize>& raw, size_t at, T v) {
    std::memcpy(raw.data() + at, &v, sizeof(T));
  }
};

}  // namespace sbx::vmm::virtio::vsock

#endif  // SBX_VMM_VIRTIO_VSOCK_PACKET_H_
