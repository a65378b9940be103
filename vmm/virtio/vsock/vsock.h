#ifndef SBX_VMM_VIRTIO_VSOCK_VSOCK_H_
#define SBX_VMM_VIRTIO_VSOCK_VSOCK_H_

#include <array>
#include <chrono>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <set>
#include <span>
#include <string>
#include <unordered_map>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "base/event_loop.h"
#include "base/unique_fd.h"
#include "vmm/virtio/device.h"
#include "vmm/virtio/vsock/packet.h"

namespace sbx::vmm::virtio {

// virtio-vsock (virtio 1.2 §5.10), stream sockets only, with the host side
// made of unix sockets in Firecracker's model (no vhost):
//
// * Host to guest: a host process connects to the unix socket `uds_path`
//   and writes "CONNECT <port>\n"; the device sends the guest a REQUEST for
//   guest port <port> from a freshly allocated host port H, and when the
//   guest answers RESPONSE it writes "OK <H>\n" back; from then on the unix
//   connection is the stream. A RST from the guest, a malformed line or no
//   answer within connect_timeout closes the host socket.
// * Guest to host: a guest REQUEST for host port P becomes a connect() to
//   "<uds_path>_<P>"; if nothing listens there the guest gets a RST.
//
// Flow control is the spec's credit scheme (§5.10.6.3) both ways: the
// device never sends a connection more data than the guest's buf_alloc and
// fwd_cnt allow, and advertises its own per-connection buffer of
// kConnBufferBytes, sending CREDIT_UPDATE as the host side consumes data
// and in answer to CREDIT_REQUEST. Data from a host socket is read straight
// into the guest's rx buffers, so when the guest posts none (or gives no
// credit) the data stays in the host socket, which is not polled until rx
// buffers or credit arrive. Data from the guest goes straight to the host
// socket; what the socket does not take is held, at most kConnBufferBytes
// per connection: a guest that sends beyond the credit it was given loses
// that connection (RST).
//
// SHUTDOWN maps to shutdown(2) on the host socket and back; RST closes it.
// At most max_connections connections exist at once; more are refused (RST
// to the guest, a closed socket to the host). The guest is hostile: a
// malformed packet is dropped or answered with RST, logged rate-limited,
// and costs the guest at most its own connections.
//
// Host sockets are non-blocking and polled through the device's own epoll
// descriptor (poll_fd()), which Create() registers with `loop`; its
// handler is HandleHostEvents(). VIRTIO_VSOCK_F_SEQPACKET is not offered.
//
// Thread-safe: the transport calls come under the transport's lock, host
// events from the loop thread; the device's own mutex serializes them
// (lock order: transport, then device; the device never calls the
// transport).
class Vsock : public Device {
 public:
  struct Options {
    // The host side: the device listens here.
    std::string uds_path;
    uint64_t guest_cid = vsock::kMinGuestCid;
    // Most connections at once (host- and guest-initiated, including host
    // sockets that have not sent their CONNECT line yet).
    size_t max_connections = 1024;
    // How long a host process may take to send its CONNECT line, and the
    // guest to answer a REQUEST.
    std::chrono::milliseconds connect_timeout{2000};
    // After SHUTDOWN in both directions, how long to wait for the guest's
    // RST (or for held data to reach the host socket) before resetting.
    std::chrono::milliseconds close_timeout{2000};
  };

  static constexpr uint16_t kQueueSize = 256;
  // The largest payload accepted in, or sent in, one packet.
  static constexpr uint32_t kMaxPacketData = 64 * 1024;
  // The buffer each connection advertises (buf_alloc) and at most holds.
  static constexpr uint32_t kConnBufferBytes = 256 * 1024;
  // The longest CONNECT line accepted, newline included.
  static constexpr size_t kMaxConnectLine = 32;
  // Host ports handed out for host-initiated connections start here.
  static constexpr uint32_t kFirstEphemeralPort = 1u << 30;

  // Unlinks a stale socket file at options.uds_path, listens there, and
  // registers the device's epoll descriptor with `loop`. Fails (with
  // kInvalidArgument for bad options or a path it cannot listen on) if the
  // CID is out of range, the path (with a "_<port>" suffix) does not fit a
  // unix socket address, or something other than a socket is in the way.
  // REQUIRES: `loop` outlives the device.
  static absl::StatusOr<std::unique_ptr<Vsock>> Create(Options options,
                                                       EventLoop& loop);
  // Removes the socket file and closes every host socket.
  ~Vsock() override;

  uint32_t device_type() const override { return kDeviceTypeVsock; }
  uint64_t device_features() const override { return 0; }
  std::span<const uint16_t> queue_max_sizes() const override {
    return kQueueMaxSizes;
  }
  void ReadConfig(uint64_t offset, std::span<uint8_t> data) const override;
  void WriteConfig(uint64_t offset, std::span<const uint8_t> data) override;
  absl::Status Activate(GuestMemory& mem, uint64_t acked_features,
                        std::span<Queue> queues,
                        Interrupt& interrupt) override;
  void ProcessQueue(size_t index) override;
  void Reset() override;
  void SaveState(sbx::vmstate::v1::VirtioDeviceState& state) const override;
  absl::Status RestoreState(
      const sbx::vmstate::v1::VirtioDeviceState& state) override;

  // Drops every connection (closing their host sockets) and tells the
  // driver with VIRTIO_VSOCK_EVENT_TRANSPORT_RESET on the event queue
  // (§5.10.6.7), at once or as soon as it posts an event buffer. For after
  // a restore, when the guest's connections no longer have host ends. On
  // an inactive device only the host sockets are closed. Call it on the
  // event-loop thread or with the vCPUs paused (it uses the event queue
  // outside the transport's lock).
  void SendTransportReset();

  // Serves whatever is ready on the host side: new host connections, their
  // CONNECT lines, readable and writable host sockets, expired timeouts.
  // The loop calls it when poll_fd() is readable; tests call it directly.
  void HandleHostEvents();
  int poll_fd() const { return epoll_.get(); }

  // Connections that exist now (for tests and monitoring).
  size_t connection_count() const;

 private:
  struct Connection;
  // A connection's (host port, guest port).
  using Key = std::pair<uint32_t, uint32_t>;

  static constexpr std::array<uint16_t, 3> kQueueMaxSizes = {
      kQueueSize, kQueueSize, kQueueSize};
  // Control packets (RST) for no connection that may wait for rx buffers;
  // beyond that the tx queue is not served until the guest takes them.
  static constexpr size_t kMaxPendingControl = 256;

  Vsock(Options options, EventLoop& loop, UniqueFd epoll, UniqueFd timer,
        UniqueFd listener);

  // --- Guest side.
  void ProcessTx() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Handles one packet from the tx queue.
  void HandleTxPacket(const DescriptorChain& chain)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void HandleGuestRequest(const vsock::PacketHeader& h)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void HandleGuestData(Connection& c, const DescriptorChain& chain,
                       const vsock::PacketHeader& h)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void HandleGuestShutdown(Connection& c, uint32_t flags)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Fills rx buffers with what is pending; raises the interrupt if needed.
  void ProcessRx() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Writes the next packet of `c` into `chain`; returns the used length.
  uint32_t FillFromConnection(Connection& c, const DescriptorChain& chain)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void ProcessEvents() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Queues a RST for a packet that has no connection (never for a RST).
  void QueueRstFor(const vsock::PacketHeader& h)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bool active() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return mem_ != nullptr;
  }

  // --- Host side.
  void AcceptHostConnections() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void HandleConnectionEvents(Connection& c, uint32_t events)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void ReadConnectLine(Connection& c) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Writes held data to the host socket; on a write error resets `c` and
  // returns false (`c` is gone).
  bool FlushToHost(Connection& c) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Applies the consequences of a state change: epoll interest, pending rx,
  // shutdown(SHUT_WR) once held data is out, closing a finished connection
  // (after which `c` is gone: callers do not touch it after Update).
  void Update(Connection& c) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void ExpireTimeouts() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void SetDeadline(Connection& c, std::chrono::milliseconds after)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void ClearDeadline(Connection& c) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void ArmTimer() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // --- Connection table.
  Connection* Find(const Key& key) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  Connection& NewConnection(UniqueFd fd) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void SetKey(Connection& c, const Key& key) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Sends the guest a RST for `c` (if the guest knows it) and removes it.
  void ResetConnection(Connection& c) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Removes `c` at once: closes the host socket, forgets the key.
  void Remove(Connection& c) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void RemoveAll() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // A host port for a host-initiated connection to `guest_port`.
  uint32_t AllocatePort(uint32_t guest_port) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const Options options_;
  EventLoop& loop_;
  const UniqueFd epoll_;
  const UniqueFd timer_;
  const UniqueFd listener_;
  // A descriptor held in reserve: when accept4 fails for want of
  // descriptors (EMFILE), closing it lets the pending connection be
  // accepted and closed at once, instead of the listener staying readable
  // and the event loop spinning on it.
  UniqueFd spare_fd_ ABSL_GUARDED_BY(mu_);

  mutable absl::Mutex mu_;
  uint64_t next_id_ ABSL_GUARDED_BY(mu_);  // never reused
  std::unordered_map<uint64_t, std::unique_ptr<Connection>> connections_
      ABSL_GUARDED_BY(mu_);
  std::map<Key, uint64_t> by_key_ ABSL_GUARDED_BY(mu_);
  // Connections with something for the guest, in the order they asked.
  std::deque<uint64_t> rx_pending_ ABSL_GUARDED_BY(mu_);
  // RSTs for packets that had no connection.
  std::deque<vsock::PacketHeader> control_rx_ ABSL_GUARDED_BY(mu_);
  std::set<std::pair<std::chrono::steady_clock::time_point, uint64_t>>
      deadlines_ ABSL_GUARDED_BY(mu_);
  uint32_t next_port_ ABSL_GUARDED_BY(mu_) = kFirstEphemeralPort;
  bool reset_event_pending_ ABSL_GUARDED_BY(mu_) = false;
  // The tx queue was left unserved because control_rx_ is full.
  bool tx_stalled_ ABSL_GUARDED_BY(mu_) = false;

  // Set by Activate, cleared by Reset.
  GuestMemory* mem_ ABSL_GUARDED_BY(mu_) = nullptr;
  Queue* rx_ ABSL_GUARDED_BY(mu_) = nullptr;
  Queue* tx_ ABSL_GUARDED_BY(mu_) = nullptr;
  Queue* event_ ABSL_GUARDED_BY(mu_) = nullptr;
  Interrupt* interrupt_ ABSL_GUARDED_BY(mu_) = nullptr;
};

}  // namespace sbx::vmm::virtio

#endif  // SBX_VMM_VIRTIO_VSOCK_VSOCK_H_
