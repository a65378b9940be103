// Fuzzes virtio-vsock packet handling (vmm/virtio/vsock/vsock.h): the real
// Vsock device, activated over rx, tx and event queues in guest RAM built
// from the input, takes the guest's tx packets (header + payload:
// REQUEST, RESPONSE, RW, SHUTDOWN, CREDIT_*, RST, malformed ones) and
// answers on the rx queue. Its host side is real unix sockets in a
// scratch directory: the guest can connect to port 1024, where the fuzzer
// listens, accepts, and optionally answers with data, EOF or a close;
// nothing listens on any other port (the guest gets RST). A host process
// can also connect to the device's own socket and send a CONNECT line
// from the input. A fresh device per input (ports and ids restart).
//
// Input: a 32-byte header, then guest RAM from address 0 (zeros after):
//   0      queue size of all three queues: 2^(b % 9), so 1..256
//   1      bit 0: VIRTIO_F_EVENT_IDX, bit 1: VIRTIO_F_INDIRECT_DESC
//   2      host actions, bit 0: a host process connects to the device's
//          socket and sends bytes 16..31 (up to a NUL) before the guest's
//          tx packets are served; after them, for every connection the
//          guest made to port 1024: bit 1: write "hello from the host",
//          bit 2: shutdown(SHUT_WR), bit 3: close; then bit 4: a second tx
//          kick after rx; bit 5: SendTransportReset
//   16..31 the host process's CONNECT line
// Rings, in the device's queue order: rx at fuzz::LayOutRing(0, size), tx
// right after it, event after that.
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "base/event_fd.h"
#include "base/event_loop.h"
#include "fuzz/fuzz_common.h"
#include "vmm/virtio/interrupt.h"
#include "vmm/virtio/queue.h"
#include "vmm/virtio/vsock/packet.h"
#include "vmm/virtio/vsock/vsock.h"

namespace sbx::fuzz {
namespace {

using vmm::virtio::Interrupt;
using vmm::virtio::Queue;
using vmm::virtio::Vsock;
using vmm::virtio::vsock::PacketHeader;

constexpr size_t kHeaderBytes = 32;
constexpr uint32_t kListenPort = 1024;
constexpr uint64_t kGuestCid = 3;

UniqueFd UnixSocket() {
  return UniqueFd(
      ::socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
}

sockaddr_un Address(const std::string& path) {
  sockaddr_un addr = {};
  addr.sun_family = AF_UNIX;
  SBX_FUZZ_ASSERT(path.size() < sizeof(addr.sun_path));
  std::memcpy(addr.sun_path, path.data(), path.size());
  return addr;
}

struct Fixture {
  std::string dir;
  std::string uds_path;
  std::unique_ptr<EventLoop> loop;  // never run: the fuzzer polls itself
  UniqueFd listener;                // "<uds_path>_1024"
  std::unique_ptr<Interrupt> interrupt;
};

Fixture& Fix() {
  static Fixture* f = [] {
    auto* f = new Fixture;
    char tmpl[] = "/tmp/sbx-fuzz-vsock-XXXXXX";
    SBX_FUZZ_ASSERT(::mkdtemp(tmpl) != nullptr);
    f->dir = tmpl;
    f->uds_path = f->dir + "/v";
    absl::StatusOr<std::unique_ptr<EventLoop>> loop = EventLoop::Create();
    SBX_FUZZ_ASSERT(loop.ok());
    f->loop = *std::move(loop);
    f->listener = UnixSocket();
    sockaddr_un addr = Address(f->uds_path + "_" + std::to_string(kListenPort));
    SBX_FUZZ_ASSERT(::bind(f->listener.get(), reinterpret_cast<sockaddr*>(&addr),
                           sizeof(addr)) == 0);
    SBX_FUZZ_ASSERT(::listen(f->listener.get(), 1024) == 0);
    absl::StatusOr<EventFd> irq = EventFd::Create();
    SBX_FUZZ_ASSERT(irq.ok());
    f->interrupt = std::make_unique<Interrupt>(*std::move(irq));
    // The scratch directory goes when the fuzzer exits normally.
    std::atexit([] {
      Fixture& f = Fix();
      ::unlink((f.uds_path + "_" + std::to_string(kListenPort)).c_str());
      ::unlink(f.uds_path.c_str());
      ::rmdir(f.dir.c_str());
    });
    return f;
  }();
  return *f;
}

// The host ends of the guest's connections to port 1024.
std::vector<UniqueFd> AcceptAll(int listener) {
  std::vector<UniqueFd> fds;
  for (;;) {
    UniqueFd fd(::accept4(listener, nullptr, nullptr,
                          SOCK_NONBLOCK | SOCK_CLOEXEC));
    if (!fd.valid()) break;
    fds.push_back(std::move(fd));
  }
  return fds;
}

void RunOne(const uint8_t* data, size_t size) {
  InputReader in(data, size);
  const uint16_t qsize = QueueSizeFrom(in.Take<uint8_t>(), Vsock::kQueueSize);
  const uint8_t flags = in.Take<uint8_t>();
  const uint8_t host = in.Take<uint8_t>();
  in.Seek(16);
  std::string line;
  for (int i = 0; i < 16; ++i) {
    char c = in.Take<char>();
    if (c == '\0') break;
    line.push_back(c);
  }
  in.Seek(kHeaderBytes);

  Fixture& fix = Fix();
  vmm::GuestMemory& mem = FuzzMemory();
  LoadImage(mem, in.Rest());

  absl::StatusOr<std::unique_ptr<Vsock>> made = Vsock::Create(
      {.uds_path = fix.uds_path, .guest_cid = kGuestCid, .max_connections = 8},
      *fix.loop);
  SBX_FUZZ_ASSERT(made.ok());
  Vsock& dev = **made;

  std::vector<Queue> queues;
  vmm::GuestAddress base = 0;
  uint64_t features = vmm::virtio::kFeatureVersion1;
  if (flags & 1) features |= vmm::virtio::kFeatureEventIdx;
  if (flags & 2) features |= vmm::virtio::kFeatureIndirectDesc;
  for (int i = 0; i < 3; ++i) {  // kRxQueue, kTxQueue, kEventQueue
    const RingLayout ring = LayOutRing(base, qsize);
    base = ring.end;
    Queue& q = queues.emplace_back(Vsock::kQueueSize);
    q.size = qsize;
    q.desc_table = ring.desc;
    q.avail_ring = ring.avail;
    q.used_ring = ring.used;
    q.event_idx = flags & 1;
    q.indirect_desc = flags & 2;
    q.ready = true;
    SBX_FUZZ_ASSERT(q.Validate(mem).ok());
  }
  SBX_FUZZ_ASSERT(dev.Activate(mem, features, queues, *fix.interrupt).ok());

  // A host process connecting in through the device's socket.
  UniqueFd client;
  if (host & 1) {
    client = UnixSocket();
    sockaddr_un addr = Address(fix.uds_path);
    if (::connect(client.get(), reinterpret_cast<sockaddr*>(&addr),
                  sizeof(addr)) == 0) {
      (void)!::send(client.get(), line.data(), line.size(), MSG_NOSIGNAL);
    }
    dev.HandleHostEvents();  // accepts
    dev.HandleHostEvents();  // reads the line, sends the guest a REQUEST
  }

  dev.ProcessQueue(vmm::virtio::vsock::kTxQueue);

  // The host end of whatever the guest connected to port 1024.
  std::vector<UniqueFd> accepted = AcceptAll(fix.listener.get());
  for (UniqueFd& fd : accepted) {
    if (host & 2) {
      static constexpr char kHello[] = "hello from the host";
      (void)!::send(fd.get(), kHello, sizeof(kHello) - 1, MSG_NOSIGNAL);
    }
    if (host & 4) ::shutdown(fd.get(), SHUT_WR);
    if (host & 8) fd.reset();
  }
  dev.HandleHostEvents();
  dev.ProcessQueue(vmm::virtio::vsock::kRxQueue);
  if (host & 16) {
    dev.ProcessQueue(vmm::virtio::vsock::kTxQueue);
    dev.HandleHostEvents();
  }
  dev.ProcessQueue(vmm::virtio::vsock::kEventQueue);
  if (host & 32) dev.SendTransportReset();
  SBX_FUZZ_ASSERT(dev.connection_count() <= 8);
  dev.Reset();
  SBX_FUZZ_ASSERT(dev.connection_count() == 0);
  made->reset();
  (void)fix.interrupt->irq().Consume();
  fix.interrupt->Clear();
  // Connections accepted by the kernel after the first AcceptAll.
  (void)AcceptAll(fix.listener.get());
}

// --- Seeds: a driver's packets.

struct SeedQueues {
  uint16_t size;
  RingLayout tx, rx, event;
};

SeedQueues Layout(uint16_t size) {
  SeedQueues q{size, {}, {}, {}};
  q.rx = LayOutRing(0, size);
  q.tx = LayOutRing(q.rx.end, size);
  q.event = LayOutRing(q.tx.end, size);
  return q;
}

PacketHeader GuestPacket(uint16_t op, uint32_t src_port, uint32_t dst_port,
                         uint32_t len) {
  PacketHeader h;
  h.src_cid = kGuestCid;
  h.dst_cid = vmm::virtio::vsock::kHostCid;
  h.src_port = src_port;
  h.dst_port = dst_port;
  h.len = len;
  h.type = vmm::virtio::vsock::kTypeStream;
  h.op = op;
  h.buf_alloc = 64 * 1024;
  h.fwd_cnt = 0;
  return h;
}

// Posts every rx and event descriptor (writable, 1 KiB / 8 bytes).
void PostRxAndEvent(ImageBuilder& img, const SeedQueues& q, uint64_t rx_bufs) {
  for (uint16_t i = 0; i < q.size; ++i) {
    img.Descriptor(q.rx.desc, i, rx_bufs + 1024u * i, 1024,
                   vmm::virtio::kDescFWrite, 0);
    img.Avail(q.rx, q.size, i, i, q.size);
  }
  img.Descriptor(q.event.desc, 0, rx_bufs - 16, 8, vmm::virtio::kDescFWrite, 0);
  img.Avail(q.event, q.size, 0, 0, 1);
}

std::vector<uint8_t> Header(uint16_t size_log2, uint8_t host,
                            const std::string& line = "") {
  std::vector<uint8_t> h(kHeaderBytes, 0);
  h[0] = static_cast<uint8_t>(size_log2);
  h[2] = host;
  std::memcpy(&h[16], line.data(), std::min<size_t>(line.size(), 16));
  return h;
}

void WriteSeeds() {
  const SeedQueues q = Layout(8);
  constexpr uint64_t kTxBufs = 0x1000;
  constexpr uint64_t kRxBufs = 0x4000;
  // Writes tx packet `i` (header, payload in a second descriptor).
  auto tx = [&](ImageBuilder& img, uint16_t i, const PacketHeader& h,
                const std::string& payload) {
    const uint64_t at = kTxBufs + 0x200u * i;
    auto raw = h.Encode();
    img.Put(at, raw.data(), raw.size());
    if (payload.empty()) {
      img.Descriptor(q.tx.desc, 2 * i, at, PacketHeader::kSize, 0, 0);
    } else {
      img.Put(at + 64, payload.data(), payload.size());
      img.Descriptor(q.tx.desc, 2 * i, at, PacketHeader::kSize,
                     vmm::virtio::kDescFNext, 2 * i + 1);
      img.Descriptor(q.tx.desc, 2 * i + 1, at + 64,
                     static_cast<uint32_t>(payload.size()), 0, 0);
    }
  };
  using namespace vmm::virtio::vsock;
  {
    // Connect to the listening port, send data, ask for credit, shut down,
    // reset; the host answers with data and EOF.
    ImageBuilder img;
    tx(img, 0, GuestPacket(kOpRequest, 5000, kListenPort, 0), "");
    tx(img, 1, GuestPacket(kOpRw, 5000, kListenPort, 11), "hello, host");
    tx(img, 2, GuestPacket(kOpCreditRequest, 5000, kListenPort, 0), "");
    PacketHeader shut = GuestPacket(kOpShutdown, 5000, kListenPort, 0);
    shut.flags = kShutdownSend;
    tx(img, 3, shut, "");
    for (uint16_t i = 0; i < 4; ++i) img.Avail(q.tx, q.size, i, 2 * i, 4);
    PostRxAndEvent(img, q, kRxBufs);
    WriteSeed("connect_send_shutdown", Concat(Header(3, 2 | 4 | 16), img.bytes()));
    WriteSeed("connect_send_host_closes", Concat(Header(3, 2 | 8 | 32), img.bytes()));
  }
  {
    // Nothing listens on port 7: RST; a packet for no connection; a
    // malformed packet (len beyond the chain); a packet with a wrong CID.
    ImageBuilder img;
    tx(img, 0, GuestPacket(kOpRequest, 6000, 7, 0), "");
    tx(img, 1, GuestPacket(kOpRw, 6001, 9, 4), "data");
    tx(img, 2, GuestPacket(kOpRw, 6002, kListenPort, 4096), "short");
    PacketHeader wrong = GuestPacket(kOpRequest, 6003, kListenPort, 0);
    wrong.src_cid = 42;
    tx(img, 3, wrong, "");
    for (uint16_t i = 0; i < 4; ++i) img.Avail(q.tx, q.size, i, 2 * i, 4);
    PostRxAndEvent(img, q, kRxBufs);
    WriteSeed("refused_and_malformed", Concat(Header(3, 0), img.bytes()));
  }
  {
    // A host process connects to guest port 80; the guest answers
    // RESPONSE (host port: the first ephemeral one), sends data, RST.
    ImageBuilder img;
    const uint32_t host_port = Vsock::kFirstEphemeralPort;
    tx(img, 0, GuestPacket(kOpResponse, 80, host_port, 0), "");
    tx(img, 1, GuestPacket(kOpRw, 80, host_port, 3), "hi\n");
    tx(img, 2, GuestPacket(kOpCreditUpdate, 80, host_port, 0), "");
    tx(img, 3, GuestPacket(kOpRst, 80, host_port, 0), "");
    for (uint16_t i = 0; i < 4; ++i) img.Avail(q.tx, q.size, i, 2 * i, 4);
    PostRxAndEvent(img, q, kRxBufs);
    WriteSeed("host_connect", Concat(Header(3, 1 | 2, "CONNECT 80\n"), img.bytes()));
  }
}

}  // namespace
}  // namespace sbx::fuzz

// libFuzzer's entry points: this target's WriteSeeds and RunOne.
SBX_FUZZ_ENTRY_POINTS()
