// virtio-vsock driven through the virtio-mmio transport by a fake driver
// (fake guest memory), against real unix sockets in a temporary directory.
// Host events are served by calling HandleHostEvents() directly: unix
// sockets deliver synchronously, so no test waits on a clock except the
// timeout test, which waits for the device's own timer descriptor.
#include "vmm/virtio/vsock/vsock.h"

#include <fcntl.h>
#include <poll.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "vmm/virtio/mmio_transport.h"
#include "vmm/virtio/testing/fake_driver.h"

namespace sbx::vmm::virtio {
namespace {

using testing::FakeVirtqueue;
using testing::MmioDriver;
using vsock::PacketHeader;

constexpr uint64_t kRamBytes = 4 << 20;
constexpr uint16_t kVqSize = 64;
constexpr GuestAddress kRxRing = 0x10000;
constexpr GuestAddress kTxRing = 0x20000;
constexpr GuestAddress kEventRing = 0x30000;
constexpr GuestAddress kRxBufs = 0x100000;  // kVqSize buffers of kRxBufSize
constexpr uint32_t kRxBufSize = 4096;
constexpr GuestAddress kTxBufs = 0x200000;  // kTxSlots of kTxSlotSize
constexpr uint32_t kTxSlots = 16;
constexpr uint32_t kTxSlotSize = 0x11000;
constexpr GuestAddress kEventBufs = 0x3f0000;
constexpr uint64_t kCid = 3;

struct Packet {
  PacketHeader h;
  std::string data;
};

// Spec values (§5.10.6), written out here rather than taken from the
// device's header.
constexpr uint16_t kRequest = 1, kResponse = 2, kRst = 3, kShutdown = 4,
                   kRw = 5, kCreditUpdate = 6, kCreditRequest = 7;

UniqueFd ConnectUnix(const std::string& path) {
  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_un addr = {};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, path.c_str(), sizeof(addr.sun_path) - 1);
  EXPECT_EQ(::connect(fd.get(), reinterpret_cast<sockaddr*>(&addr),
                      sizeof(addr)),
            0)
      << path << ": " << std::strerror(errno);
  return fd;
}

UniqueFd ListenUnix(const std::string& path) {
  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_un addr = {};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, path.c_str(), sizeof(addr.sun_path) - 1);
  EXPECT_EQ(::bind(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)),
            0);
  EXPECT_EQ(::listen(fd.get(), 16), 0);
  return fd;
}

void WriteAll(int fd, const std::string& s) {
  ASSERT_EQ(::send(fd, s.data(), s.size(), MSG_NOSIGNAL),
            static_cast<ssize_t>(s.size()));
}

// Everything the host socket holds now, without waiting; sets *eof if the
// stream ended.
std::string ReadAvailable(int fd, bool* eof = nullptr) {
  std::string out;
  if (eof != nullptr) *eof = false;
  char buf[65536];
  for (;;) {
    ssize_t n = ::recv(fd, buf, sizeof(buf), MSG_DONTWAIT);
    if (n > 0) {
      out.append(buf, static_cast<size_t>(n));
      continue;
    }
    if (n == 0 || (n < 0 && errno != EAGAIN)) {
      if (eof != nullptr) *eof = true;
    }
    return out;
  }
}

// True if the peer closed the socket (EOF or reset) after any data.
bool Closed(int fd) {
  bool eof;
  ReadAvailable(fd, &eof);
  return eof;
}

class VsockTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = ::testing::TempDir() + "vsock_test_XXXXXX";
    ASSERT_NE(::mkdtemp(dir_.data()), nullptr);
    uds_ = dir_ + "/v.sock";
    auto loop = EventLoop::Create();
    ASSERT_TRUE(loop.ok());
    loop_ = *std::move(loop);
  }
  void TearDown() override {
    transport_.reset();
    std::string cmd = "rm -rf '" + dir_ + "'";
    ASSERT_EQ(std::system(cmd.c_str()), 0);
  }

  Vsock::Options DefaultOptions() {
    Vsock::Options o;
    o.uds_path = uds_;
    o.guest_cid = kCid;
    return o;
  }

  // Creates the device and brings it up as a driver would (§3.1.1).
  void Start(Vsock::Options options) {
    auto mem = GuestMemory::Create(kRamBytes);
    ASSERT_TRUE(mem.ok());
    mem_ = *std::move(mem);
    auto dev = Vsock::Create(options, *loop_);
    ASSERT_TRUE(dev.ok()) << dev.status();
    vsock_ = dev->get();
    auto irq = EventFd::Create();
    ASSERT_TRUE(irq.ok());
    auto transport =
        MmioTransport::Create(*mem_, *std::move(dev), *std::move(irq));
    ASSERT_TRUE(transport.ok()) << transport.status();
    transport_ = *std::move(transport);
    driver_.emplace(*transport_);
    rxq_.emplace(*mem_, kRxRing, kVqSize);
    txq_.emplace(*mem_, kTxRing, kVqSize);
    evq_.emplace(*mem_, kEventRing, kVqSize);
    ASSERT_TRUE(driver_->Negotiate(kFeatureVersion1));
    driver_->SetUpQueue(0, *rxq_);
    driver_->SetUpQueue(1, *txq_);
    driver_->SetUpQueue(2, *evq_);
    driver_->DriverOk();
    ASSERT_EQ(driver_->Read32(MmioDriver::kStatus), 0xfu);
  }
  void Start() { Start(DefaultOptions()); }

  // Posts `n` rx buffers of kRxBufSize (or `size`) and kicks the rx queue.
  void PostRx(int n, uint32_t size = kRxBufSize) {
    for (int i = 0; i < n; ++i) {
      GuestAddress addr = kRxBufs + (rx_posted_++ % kVqSize) * kRxBufSize;
      rxq_->Post({{addr, size, true}});
    }
    transport_->NotifyQueue(0);
  }

  // The packets the device put in the rx queue since the last call.
  std::vector<Packet> TakeRx() {
    std::vector<Packet> out;
    while (rx_seen_ != rxq_->UsedIdx()) {
      FakeVirtqueue::UsedElem e = rxq_->Used(rx_seen_++);
      GuestAddress addr = kRxBufs + e.id * kRxBufSize;
      if (e.len < PacketHeader::kSize) {
        out.push_back({});
        continue;
      }
      std::array<uint8_t, PacketHeader::kSize> raw;
      EXPECT_TRUE(mem_->Read(addr, raw).ok());
      Packet p;
      p.h = PacketHeader::Decode(raw);
      EXPECT_EQ(e.len, PacketHeader::kSize + p.h.len);
      EXPECT_LE(p.h.len, kRxBufSize - PacketHeader::kSize);
      p.data.resize(p.h.len);
      EXPECT_TRUE(mem_->Read(addr + PacketHeader::kSize,
                             std::span(reinterpret_cast<uint8_t*>(p.data.data()),
                                       p.data.size()))
                      .ok());
      EXPECT_EQ(p.h.src_cid, vsock::kHostCid);
      EXPECT_EQ(p.h.dst_cid, kCid);
      EXPECT_EQ(p.h.type, 1);
      out.push_back(std::move(p));
    }
    return out;
  }

  // A header from the guest.
  PacketHeader Hdr(uint16_t op, uint32_t guest_port, uint32_t host_port,
                   uint32_t len = 0) {
    PacketHeader h;
    h.src_cid = kCid;
    h.dst_cid = vsock::kHostCid;
    h.src_port = guest_port;
    h.dst_port = host_port;
    h.len = len;
    h.type = 1;
    h.op = op;
    h.buf_alloc = guest_buf_alloc_;
    h.fwd_cnt = guest_fwd_cnt_;
    return h;
  }

  // Puts a packet (header and payload in one buffer) on the tx queue and
  // kicks it.
  void SendTx(const PacketHeader& h, const std::string& data = "") {
    ASSERT_LE(data.size(), kTxSlotSize - PacketHeader::kSize);
    GuestAddress addr = kTxBufs + (tx_sent_++ % kTxSlots) * kTxSlotSize;
    ASSERT_TRUE(mem_->Write(addr, h.Encode()).ok());
    ASSERT_TRUE(mem_->Write(addr + PacketHeader::kSize,
                            std::span(reinterpret_cast<const uint8_t*>(data.data()),
                                      data.size()))
                    .ok());
    txq_->Post({{addr, static_cast<uint32_t>(PacketHeader::kSize + data.size()),
                 false}});
    transport_->NotifyQueue(1);
  }
  void SendRw(uint32_t guest_port, uint32_t host_port, const std::string& data) {
    SendTx(Hdr(kRw, guest_port, host_port, static_cast<uint32_t>(data.size())),
           data);
  }

  // Serves host events until none are left (bounded).
  void Pump() {
    for (int i = 0; i < 20; ++i) {
      vsock_->HandleHostEvents();
      pollfd p = {.fd = vsock_->poll_fd(), .events = POLLIN, .revents = 0};
      if (::poll(&p, 1, 0) != 1) return;
    }
  }

  struct HostConn {
    UniqueFd fd;
    uint32_t host_port = 0;
  };
  // A host process connects to `guest_port` and the guest accepts.
  HostConn HostConnect(uint32_t guest_port) {
    HostConn c;
    c.fd = ConnectUnix(uds_);
    WriteAll(c.fd.get(), absl::StrCat("CONNECT ", guest_port, "\n"));
    Pump();
    std::vector<Packet> rx = TakeRx();
    EXPECT_EQ(rx.size(), 1u);
    if (rx.size() != 1) return c;
    EXPECT_EQ(rx[0].h.op, kRequest);
    EXPECT_EQ(rx[0].h.dst_port, guest_port);
    EXPECT_EQ(rx[0].h.buf_alloc, Vsock::kConnBufferBytes);
    c.host_port = rx[0].h.src_port;
    SendTx(Hdr(kResponse, guest_port, c.host_port));
    EXPECT_EQ(ReadAvailable(c.fd.get()),
              absl::StrCat("OK ", c.host_port, "\n"));
    return c;
  }

  // The guest connects to host port `port`, where the test listens.
  UniqueFd GuestConnect(int listener, uint32_t guest_port, uint32_t port) {
    SendTx(Hdr(kRequest, guest_port, port));
    std::vector<Packet> rx = TakeRx();
    EXPECT_EQ(rx.size(), 1u);
    if (rx.size() == 1) {
      EXPECT_EQ(rx[0].h.op, kResponse);
      EXPECT_EQ(rx[0].h.src_port, port);
      EXPECT_EQ(rx[0].h.dst_port, guest_port);
    }
    return UniqueFd(::accept4(listener, nullptr, nullptr, SOCK_CLOEXEC));
  }

  std::string dir_;
  std::string uds_;
  std::unique_ptr<EventLoop> loop_;
  std::unique_ptr<GuestMemory> mem_;
  Vsock* vsock_ = nullptr;
  std::unique_ptr<MmioTransport> transport_;
  std::optional<MmioDriver> driver_;
  std::optional<FakeVirtqueue> rxq_, txq_, evq_;
  uint32_t rx_posted_ = 0;
  uint16_t rx_seen_ = 0;
  uint32_t tx_sent_ = 0;
  uint32_t guest_buf_alloc_ = 64 * 1024;
  uint32_t guest_fwd_cnt_ = 0;
};

TEST_F(VsockTest, IsDevice19WithTheGuestCidInItsConfigAndNoSeqpacket) {
  Vsock::Options o = DefaultOptions();
  o.guest_cid = 0x1'2345;
  Start(o);
  EXPECT_EQ(driver_->Read32(MmioDriver::kDeviceId), 19u);
  EXPECT_EQ(driver_->Read32(MmioDriver::kConfig), 0x1'2345u);
  EXPECT_EQ(driver_->Read32(MmioDriver::kConfig + 4), 0u);
  EXPECT_EQ(driver_->DeviceFeatures() & 2, 0u);  // VIRTIO_VSOCK_F_SEQPACKET
  driver_->Write32(MmioDriver::kQueueSel, 2);
  EXPECT_EQ(driver_->Read32(MmioDriver::kQueueNumMax), Vsock::kQueueSize);
  driver_->Write32(MmioDriver::kQueueSel, 3);
  EXPECT_EQ(driver_->Read32(MmioDriver::kQueueNumMax), 0u);
  struct stat st;
  ASSERT_EQ(::stat(uds_.c_str(), &st), 0);
  EXPECT_TRUE(S_ISSOCK(st.st_mode));
}

TEST_F(VsockTest, CreateRefusesBadOptionsAndReplacesAStaleSocket) {
  Vsock::Options o = DefaultOptions();
  o.guest_cid = 2;
  EXPECT_EQ(Vsock::Create(o, *loop_).status().code(),
            absl::StatusCode::kInvalidArgument);
  o = DefaultOptions();
  o.uds_path = dir_ + "/" + std::string(100, 'x');
  EXPECT_EQ(Vsock::Create(o, *loop_).status().code(),
            absl::StatusCode::kInvalidArgument);
  o = DefaultOptions();
  o.uds_path = dir_ + "/regular";
  { UniqueFd f(::open(o.uds_path.c_str(), O_CREAT | O_WRONLY | O_CLOEXEC, 0600)); }
  EXPECT_EQ(Vsock::Create(o, *loop_).status().code(),
            absl::StatusCode::kInvalidArgument);
  // A socket file left behind by an earlier run is replaced, and removed
  // when the device goes.
  { UniqueFd stale = ListenUnix(uds_); }
  {
    auto v = Vsock::Create(DefaultOptions(), *loop_);
    ASSERT_TRUE(v.ok()) << v.status();
    UniqueFd c = ConnectUnix(uds_);
    EXPECT_TRUE(c.valid());
  }
  struct stat st;
  EXPECT_NE(::stat(uds_.c_str(), &st), 0);
}

TEST_F(VsockTest, HostConnectsToAGuestPortAndDataFlowsBothWays) {
  Start();
  PostRx(8);
  HostConn c = HostConnect(52);
  EXPECT_GE(c.host_port, Vsock::kFirstEphemeralPort);

  WriteAll(c.fd.get(), "ping from host");
  Pump();
  std::vector<Packet> rx = TakeRx();
  ASSERT_EQ(rx.size(), 1u);
  EXPECT_EQ(rx[0].h.op, kRw);
  EXPECT_EQ(rx[0].h.src_port, c.host_port);
  EXPECT_EQ(rx[0].h.dst_port, 52u);
  EXPECT_EQ(rx[0].data, "ping from host");

  SendRw(52, c.host_port, "pong from guest");
  EXPECT_EQ(ReadAvailable(c.fd.get()), "pong from guest");
  EXPECT_EQ(vsock_->connection_count(), 1u);
}

TEST_F(VsockTest, DataSentRightAfterTheConnectLineReachesTheGuest) {
  Start();
  PostRx(8);
  UniqueFd fd = ConnectUnix(uds_);
  WriteAll(fd.get(), "CONNECT 7\nearly bytes");
  Pump();
  std::vector<Packet> rx = TakeRx();
  ASSERT_EQ(rx.size(), 1u);
  ASSERT_EQ(rx[0].h.op, kRequest);
  SendTx(Hdr(kResponse, 7, rx[0].h.src_port));
  Pump();
  rx = TakeRx();
  ASSERT_EQ(rx.size(), 1u);
  EXPECT_EQ(rx[0].data, "early bytes");
}

TEST_F(VsockTest, OutOfDescriptorsRefusesHostConnectionsWithoutSpinning) {
  Start();
  PostRx(8);
  UniqueFd first = ConnectUnix(uds_);
  UniqueFd second = ConnectUnix(uds_);
  // No descriptor left for accept4 in this process.
  rlimit saved;
  ASSERT_EQ(::getrlimit(RLIMIT_NOFILE, &saved), 0);
  std::vector<UniqueFd> filler;
  rlimit tight = saved;
  tight.rlim_cur = 256;
  ASSERT_EQ(::setrlimit(RLIMIT_NOFILE, &tight), 0);
  while (true) {
    UniqueFd fd(::open("/dev/null", O_RDONLY | O_CLOEXEC));
    if (!fd.valid()) break;
    filler.push_back(std::move(fd));
  }
  Pump();
  // Both were accepted and closed: the listener is no longer readable.
  pollfd p = {.fd = vsock_->poll_fd(), .events = POLLIN, .revents = 0};
  int ready = ::poll(&p, 1, 0);
  filler.clear();
  ASSERT_EQ(::setrlimit(RLIMIT_NOFILE, &saved), 0);
  EXPECT_EQ(ready, 0) << "the listener still has a connection pending";
  EXPECT_TRUE(Closed(first.get()));
  EXPECT_TRUE(Closed(second.get()));
  // With descriptors back, connections are served again.
  HostConn c = HostConnect(52);
  EXPECT_NE(c.host_port, 0u);
}

TEST_F(VsockTest, MalformedConnectLinesCloseTheHostSocket) {
  Start();
  PostRx(8);
  for (const std::string& line : std::vector<std::string>{
           "CONNECT\n", "CONNECT \n", "CONNECT abc\n", "CONNECT 12x\n",
        "CONNECT -1\n", "CONNECT 4294967295\n", "CONNECT 99999999999\n",
        "connect 5\n", "CONNECT  5\n", "CONNECT 5 \n",
        std::string(Vsock::kMaxConnectLine, '1')}) {
    UniqueFd fd = ConnectUnix(uds_);
    WriteAll(fd.get(), line);
    Pump();
    EXPECT_TRUE(Closed(fd.get())) << line;
    EXPECT_TRUE(TakeRx().empty()) << line;
  }
  EXPECT_EQ(vsock_->connection_count(), 0u);
}

TEST_F(VsockTest, GuestRstOrNoAnswerClosesTheHostSocket) {
  Vsock::Options o = DefaultOptions();
  o.connect_timeout = std::chrono::milliseconds(1);
  Start(o);
  PostRx(8);
  UniqueFd refused = ConnectUnix(uds_);
  WriteAll(refused.get(), "CONNECT 80\n");
  Pump();
  std::vector<Packet> rx = TakeRx();
  ASSERT_EQ(rx.size(), 1u);
  SendTx(Hdr(kRst, 80, rx[0].h.src_port));
  EXPECT_TRUE(Closed(refused.get()));

  UniqueFd ignored = ConnectUnix(uds_);
  WriteAll(ignored.get(), "CONNECT 81\n");
  Pump();
  rx = TakeRx();
  ASSERT_EQ(rx.size(), 1u);
  EXPECT_EQ(rx[0].h.op, kRequest);
  const uint32_t port = rx[0].h.src_port;
  // Wait for the device's own timer, not a clock of ours.
  pollfd p = {.fd = vsock_->poll_fd(), .events = POLLIN, .revents = 0};
  ASSERT_EQ(::poll(&p, 1, 5000), 1);
  Pump();
  EXPECT_TRUE(Closed(ignored.get()));
  rx = TakeRx();
  ASSERT_EQ(rx.size(), 1u);
  EXPECT_EQ(rx[0].h.op, kRst);  // the guest forgets its half too
  EXPECT_EQ(rx[0].h.src_port, port);
  EXPECT_EQ(vsock_->connection_count(), 0u);
}

TEST_F(VsockTest, GuestConnectsToTheListenerAtPathUnderscorePort) {
  Start();
  PostRx(8);
  UniqueFd listener = ListenUnix(uds_ + "_1024");
  UniqueFd host = GuestConnect(listener.get(), 3333, 1024);
  ASSERT_TRUE(host.valid());
  SendRw(3333, 1024, "hello host");
  EXPECT_EQ(ReadAvailable(host.get()), "hello host");
  WriteAll(host.get(), "hello guest");
  Pump();
  std::vector<Packet> rx = TakeRx();
  ASSERT_EQ(rx.size(), 1u);
  EXPECT_EQ(rx[0].h.op, kRw);
  EXPECT_EQ(rx[0].h.src_port, 1024u);
  EXPECT_EQ(rx[0].h.dst_port, 3333u);
  EXPECT_EQ(rx[0].data, "hello guest");
}

TEST_F(VsockTest, GuestConnectionToNoListenerIsReset) {
  Start();
  PostRx(8);
  SendTx(Hdr(kRequest, 3333, 9999));
  std::vector<Packet> rx = TakeRx();
  ASSERT_EQ(rx.size(), 1u);
  EXPECT_EQ(rx[0].h.op, kRst);
  EXPECT_EQ(rx[0].h.src_port, 9999u);
  EXPECT_EQ(rx[0].h.dst_port, 3333u);
  EXPECT_EQ(vsock_->connection_count(), 0u);
}

TEST_F(VsockTest, HostNeverSendsMoreThanTheGuestsCredit) {
  Start();
  guest_buf_alloc_ = 100;
  PostRx(8);
  HostConn c = HostConnect(5);  // the RESPONSE advertised 100 bytes
  WriteAll(c.fd.get(), std::string(1000, 'a'));
  Pump();
  std::vector<Packet> rx = TakeRx();
  ASSERT_EQ(rx.size(), 1u);
  EXPECT_EQ(rx[0].h.op, kRw);
  EXPECT_EQ(rx[0].h.len, 100u);
  // No credit: nothing more however often the host side is served.
  Pump();
  PostRx(2);
  EXPECT_TRUE(TakeRx().empty());
  // The guest consumed 60 bytes.
  guest_fwd_cnt_ = 60;
  SendTx(Hdr(kCreditUpdate, 5, c.host_port));
  Pump();
  rx = TakeRx();
  ASSERT_EQ(rx.size(), 1u);
  EXPECT_EQ(rx[0].h.len, 60u);
  // The guest's buffer grows.
  guest_buf_alloc_ = 1000;
  SendTx(Hdr(kCreditUpdate, 5, c.host_port));
  Pump();
  size_t total = 0;
  for (const Packet& p : TakeRx()) total += p.h.len;
  EXPECT_EQ(total, 840u);
}

TEST_F(VsockTest, CreditRequestIsAnsweredWithOurCredit) {
  Start();
  PostRx(8);
  HostConn c = HostConnect(5);
  SendRw(5, c.host_port, "12345");
  EXPECT_EQ(ReadAvailable(c.fd.get()), "12345");
  SendTx(Hdr(kCreditRequest, 5, c.host_port));
  std::vector<Packet> rx = TakeRx();
  ASSERT_EQ(rx.size(), 1u);
  EXPECT_EQ(rx[0].h.op, kCreditUpdate);
  EXPECT_EQ(rx[0].h.buf_alloc, Vsock::kConnBufferBytes);
  EXPECT_EQ(rx[0].h.fwd_cnt, 5u);
}

TEST_F(VsockTest, HostDataWaitsInTheSocketUntilRxBuffersArrive) {
  Start();
  guest_buf_alloc_ = 1 << 30;  // a huge claim changes nothing
  PostRx(2);
  HostConn c = HostConnect(5);  // used one rx buffer
  const std::string big(20000, 'z');
  WriteAll(c.fd.get(), big);
  Pump();
  std::vector<Packet> rx = TakeRx();
  ASSERT_EQ(rx.size(), 1u);
  EXPECT_EQ(rx[0].h.len, kRxBufSize - PacketHeader::kSize);
  std::string got = rx[0].data;
  Pump();
  EXPECT_TRUE(TakeRx().empty());
  PostRx(8);  // the rx kick resumes the transfer
  for (const Packet& p : TakeRx()) got += p.data;
  EXPECT_EQ(got, big);
}

TEST_F(VsockTest, GuestDataBeyondOurCreditResetsOnlyThatConnection) {
  Start();
  PostRx(8);
  HostConn victim = HostConnect(5);
  HostConn other = HostConnect(6);
  // The host process does not read; the guest ignores buf_alloc.
  const std::string chunk(Vsock::kMaxPacketData, 'x');
  bool reset = false;
  for (int i = 0; i < 40 && !reset; ++i) {
    SendRw(5, victim.host_port, chunk);
    for (const Packet& p : TakeRx()) reset |= p.h.op == kRst;
  }
  EXPECT_TRUE(reset);
  EXPECT_TRUE(Closed(victim.fd.get()));
  SendRw(6, other.host_port, "still fine");
  EXPECT_EQ(ReadAvailable(other.fd.get()), "still fine");
}

TEST_F(VsockTest, HeldGuestDataIsFlushedAsTheHostReadsAndCreditReturns) {
  Start();
  PostRx(16);
  UniqueFd listener = ListenUnix(uds_ + "_77");
  UniqueFd host = GuestConnect(listener.get(), 1, 77);
  // Fill the host socket and then some, within our credit.
  std::string sent;
  uint32_t credit_used = 0;
  for (int i = 0; credit_used + Vsock::kMaxPacketData <= Vsock::kConnBufferBytes;
       ++i) {
    std::string chunk(Vsock::kMaxPacketData, static_cast<char>('a' + i));
    SendRw(1, 77, chunk);
    sent += chunk;
    credit_used += chunk.size();
  }
  std::string got = ReadAvailable(host.get());
  Pump();  // EPOLLOUT: held data moves on
  got += ReadAvailable(host.get());
  Pump();
  got += ReadAvailable(host.get());
  EXPECT_EQ(got, sent);
  // The guest was told it may send again before it ran out...
  uint32_t fwd = 0;
  for (const Packet& p : TakeRx()) fwd = p.h.fwd_cnt;
  EXPECT_GE(Vsock::kConnBufferBytes - (credit_used - fwd), Vsock::kMaxPacketData);
  // ...and asking gives the exact count.
  SendTx(Hdr(kCreditRequest, 1, 77));
  std::vector<Packet> rx = TakeRx();
  ASSERT_EQ(rx.size(), 1u);
  EXPECT_EQ(rx[0].h.fwd_cnt, credit_used);
}

TEST_F(VsockTest, GuestShutdownHalfClosesAndFullShutdownEndsWithRst) {
  Start();
  PostRx(8);
  HostConn c = HostConnect(5);
  SendRw(5, c.host_port, "last words");
  SendTx([&] {
    PacketHeader h = Hdr(kShutdown, 5, c.host_port);
    h.flags = 2;  // SEND: the guest sends no more
    return h;
  }());
  bool eof;
  EXPECT_EQ(ReadAvailable(c.fd.get(), &eof), "last words");
  EXPECT_TRUE(eof);
  // The other direction still works.
  WriteAll(c.fd.get(), "reply");
  Pump();
  std::vector<Packet> rx = TakeRx();
  ASSERT_EQ(rx.size(), 1u);
  EXPECT_EQ(rx[0].data, "reply");
  // RCV too: the connection is over; the host answers RST (§5.10.6.5).
  PacketHeader h = Hdr(kShutdown, 5, c.host_port);
  h.flags = 3;
  SendTx(h);
  rx = TakeRx();
  ASSERT_EQ(rx.size(), 1u);
  EXPECT_EQ(rx[0].h.op, kRst);
  EXPECT_EQ(vsock_->connection_count(), 0u);
}

TEST_F(VsockTest, HostHalfCloseAndCloseBecomeShutdowns) {
  Start();
  PostRx(8);
  HostConn c = HostConnect(5);
  WriteAll(c.fd.get(), "bye");
  ASSERT_EQ(::shutdown(c.fd.get(), SHUT_WR), 0);
  Pump();
  std::vector<Packet> rx = TakeRx();
  ASSERT_EQ(rx.size(), 2u);
  EXPECT_EQ(rx[0].data, "bye");
  EXPECT_EQ(rx[1].h.op, kShutdown);
  EXPECT_EQ(rx[1].h.flags, 2u);  // no more sends; still receiving
  SendRw(5, c.host_port, "answer");
  EXPECT_EQ(ReadAvailable(c.fd.get()), "answer");

  HostConn d = HostConnect(6);
  d.fd.reset();  // closed: neither sends nor receives
  Pump();
  rx = TakeRx();
  ASSERT_EQ(rx.size(), 1u);
  EXPECT_EQ(rx[0].h.op, kShutdown);
  EXPECT_EQ(rx[0].h.flags, 3u);
  SendTx(Hdr(kRst, 6, d.host_port));  // the guest's RST completes it
  EXPECT_EQ(vsock_->connection_count(), 1u);
}

TEST_F(VsockTest, RstFromTheGuestClosesTheHostSocket) {
  Start();
  PostRx(8);
  HostConn c = HostConnect(5);
  SendTx(Hdr(kRst, 5, c.host_port));
  EXPECT_TRUE(Closed(c.fd.get()));
  EXPECT_TRUE(TakeRx().empty());  // a RST is never answered
  // The connection is gone: more data for it is refused.
  SendRw(5, c.host_port, "late");
  std::vector<Packet> rx = TakeRx();
  ASSERT_EQ(rx.size(), 1u);
  EXPECT_EQ(rx[0].h.op, kRst);
}

TEST_F(VsockTest, GuestWriteToAClosedHostSocketIsReset) {
  Start();
  PostRx(8);
  UniqueFd listener = ListenUnix(uds_ + "_90");
  UniqueFd host = GuestConnect(listener.get(), 1, 90);
  host.reset();
  SendRw(1, 90, "anyone there?");
  Pump();
  bool rst = false;
  for (const Packet& p : TakeRx()) rst |= p.h.op == kRst;
  EXPECT_TRUE(rst);
}

TEST_F(VsockTest, MalformedPacketsAreDroppedOrResetWithoutHarm) {
  Start();
  PostRx(32);
  HostConn c = HostConnect(5);
  uint16_t tx_used = txq_->UsedIdx();

  // Shorter than a header: dropped, buffer returned.
  txq_->Post({{kTxBufs, 20, false}});
  transport_->NotifyQueue(1);
  EXPECT_EQ(txq_->UsedIdx(), ++tx_used);
  // A header only in a device-writable buffer: no readable header.
  txq_->Post({{kTxBufs, 44, true}});
  transport_->NotifyQueue(1);
  EXPECT_EQ(txq_->UsedIdx(), ++tx_used);
  // Someone else's CID: dropped without an answer.
  PacketHeader h = Hdr(kRw, 5, c.host_port, 4);
  h.src_cid = 7;
  SendTx(h, "evil");
  h = Hdr(kRequest, 5, 1000);
  h.dst_cid = 9;
  SendTx(h);
  EXPECT_TRUE(TakeRx().empty());
  // Unknown connection, unknown op, wrong type: RST.
  SendRw(77, 88, "nobody");
  h = Hdr(42, 5, 1234);
  SendTx(h);
  h = Hdr(kRequest, 5, 1234);
  h.type = 2;  // SEQPACKET, not offered
  SendTx(h);
  std::vector<Packet> rx = TakeRx();
  ASSERT_EQ(rx.size(), 3u);
  for (const Packet& p : rx) EXPECT_EQ(p.h.op, kRst);
  EXPECT_EQ(rx[0].h.dst_port, 77u);
  EXPECT_EQ(rx[0].h.src_port, 88u);
  // len beyond the descriptor, and beyond the cap: that connection resets.
  HostConn d = HostConnect(6);
  h = Hdr(kRw, 6, d.host_port, 5000);
  SendTx(h, "short");
  rx = TakeRx();
  ASSERT_EQ(rx.size(), 1u);
  EXPECT_EQ(rx[0].h.op, kRst);
  EXPECT_TRUE(Closed(d.fd.get()));
  HostConn e = HostConnect(7);
  h = Hdr(kRw, 7, e.host_port, Vsock::kMaxPacketData + 1);
  SendTx(h, std::string(Vsock::kMaxPacketData + 1, 'x'));
  rx = TakeRx();
  ASSERT_EQ(rx.size(), 1u);
  EXPECT_EQ(rx[0].h.op, kRst);
  EXPECT_EQ(ReadAvailable(e.fd.get()), "");
  // A RESPONSE on an established connection is a protocol error.
  HostConn f = HostConnect(8);
  SendTx(Hdr(kResponse, 8, f.host_port));
  rx = TakeRx();
  ASSERT_EQ(rx.size(), 1u);
  EXPECT_EQ(rx[0].h.op, kRst);
  // The first connection never noticed.
  SendRw(5, c.host_port, "ok");
  EXPECT_EQ(ReadAvailable(c.fd.get()), "ok");
  WriteAll(c.fd.get(), "after all that");
  Pump();
  rx = TakeRx();
  ASSERT_EQ(rx.size(), 1u);
  EXPECT_EQ(rx[0].data, "after all that");
}

TEST_F(VsockTest, RxBuffersTooSmallForAHeaderAreReturnedEmpty) {
  Start();
  PostRx(1, 10);
  PostRx(1);
  UniqueFd fd = ConnectUnix(uds_);
  WriteAll(fd.get(), "CONNECT 5\n");
  Pump();
  std::vector<Packet> rx = TakeRx();
  ASSERT_EQ(rx.size(), 2u);
  EXPECT_EQ(rx[0].h.op, 0);  // used length 0
  EXPECT_EQ(rx[1].h.op, kRequest);
}

TEST_F(VsockTest, AFloodOfBogusPacketsStallsOnlyTheGuestsOwnTxQueue) {
  Start();
  // No rx buffers: every RST waits. Past a bound, tx is not served.
  uint16_t sent = 0;
  while (sent < 1000) {
    SendRw(1000 + sent, 5, "x");
    if (txq_->UsedIdx() != ++sent) break;
  }
  const uint16_t stalled_at = txq_->UsedIdx();
  EXPECT_LT(stalled_at, sent);
  EXPECT_GE(stalled_at, 64);
  for (int i = 0; i < 8; ++i) SendRw(5000 + i, 5, "y");
  sent += 8;
  EXPECT_EQ(txq_->UsedIdx(), stalled_at);
  // Taking the RSTs lets the rest through.
  size_t rsts = 0;
  for (int round = 0; round < 40 && rsts < sent; ++round) {
    PostRx(kVqSize / 2);
    for (const Packet& p : TakeRx()) rsts += p.h.op == kRst;
  }
  EXPECT_EQ(rsts, sent);
  EXPECT_EQ(txq_->UsedIdx(), sent);
}

TEST_F(VsockTest, ManyConnectionsAtOnceAndRefusalsBeyondTheLimit) {
  Vsock::Options o = DefaultOptions();
  o.max_connections = 24;
  Start(o);
  PostRx(kVqSize);
  UniqueFd listener = ListenUnix(uds_ + "_500");
  std::vector<HostConn> host;
  std::vector<UniqueFd> guest;
  for (int i = 0; i < 12; ++i) {
    host.push_back(HostConnect(100 + i));
    guest.push_back(GuestConnect(listener.get(), 2000 + i, 500));
    PostRx(2);
  }
  EXPECT_EQ(vsock_->connection_count(), 24u);
  // Both kinds are refused beyond the limit.
  SendTx(Hdr(kRequest, 9999, 500));
  std::vector<Packet> rx = TakeRx();
  ASSERT_EQ(rx.size(), 1u);
  EXPECT_EQ(rx[0].h.op, kRst);
  UniqueFd extra = ConnectUnix(uds_);
  Pump();
  EXPECT_TRUE(Closed(extra.get()));
  // Every connection carries its own data.
  for (int i = 0; i < 12; ++i) {
    SendRw(100 + i, host[i].host_port, absl::StrCat("h", i));
    SendRw(2000 + i, 500, absl::StrCat("g", i));
  }
  for (int i = 0; i < 12; ++i) {
    EXPECT_EQ(ReadAvailable(host[i].fd.get()), absl::StrCat("h", i));
    EXPECT_EQ(ReadAvailable(guest[i].get()), absl::StrCat("g", i));
  }
}

TEST_F(VsockTest, TransportResetDropsEveryConnectionAndTellsTheGuest) {
  Start();
  PostRx(8);
  HostConn c = HostConnect(5);
  UniqueFd listener = ListenUnix(uds_ + "_600");
  UniqueFd g = GuestConnect(listener.get(), 1, 600);
  vsock_->SendTransportReset();  // no event buffer yet: delivered later
  EXPECT_EQ(vsock_->connection_count(), 0u);
  EXPECT_TRUE(Closed(c.fd.get()));
  EXPECT_TRUE(Closed(g.get()));
  EXPECT_EQ(evq_->UsedIdx(), 0);
  ASSERT_TRUE(mem_->WriteObj<uint32_t>(kEventBufs, 0xffff'ffff).ok());
  evq_->Post({{kEventBufs, 4, true}});
  transport_->NotifyQueue(2);
  ASSERT_EQ(evq_->UsedIdx(), 1);
  EXPECT_EQ(evq_->Used(0).len, 4u);
  EXPECT_EQ(*mem_->ReadObj<uint32_t>(kEventBufs), 0u);  // TRANSPORT_RESET
  // With a buffer posted, the next reset is delivered at once.
  evq_->Post({{kEventBufs + 16, 4, true}});
  transport_->NotifyQueue(2);
  EXPECT_EQ(evq_->UsedIdx(), 1);  // the device keeps event buffers
  vsock_->SendTransportReset();
  EXPECT_EQ(evq_->UsedIdx(), 2);
  EXPECT_GE(*transport_->interrupt().irq().Consume(), 1u);
  // The old connections are unknown now; new ones work.
  SendRw(5, c.host_port, "stale");
  std::vector<Packet> rx = TakeRx();
  ASSERT_EQ(rx.size(), 1u);
  EXPECT_EQ(rx[0].h.op, kRst);
  HostConn fresh = HostConnect(5);
  SendRw(5, fresh.host_port, "fresh");
  EXPECT_EQ(ReadAvailable(fresh.fd.get()), "fresh");
}

TEST_F(VsockTest, DeviceResetClosesHostSockets) {
  Start();
  PostRx(8);
  HostConn c = HostConnect(5);
  driver_->Write32(MmioDriver::kStatus, 0);
  EXPECT_TRUE(Closed(c.fd.get()));
  EXPECT_EQ(vsock_->connection_count(), 0u);
}

}  // namespace
}  // namespace sbx::vmm::virtio
