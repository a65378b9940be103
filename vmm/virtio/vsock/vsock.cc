#include "vmm/virtio/vsock/vsock.h"

#include <poll.h>
#include <fcntl.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/timerfd.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <optional>
#include <vector>

#include "base/logging.h"
#include "base/status.h"

namespace sbx::vmm::virtio {

using vsock::PacketHeader;

namespace {

// epoll data tags; connection ids start above them.
constexpr uint64_t kListenerTag = 0;
constexpr uint64_t kTimerTag = 1;
constexpr uint64_t kFirstConnectionId = 16;

constexpr uint32_t kShutdownBoth = vsock::kShutdownRcv | vsock::kShutdownSend;
// The longest "_<port>" a guest-initiated connection appends to the path.
constexpr size_t kPortSuffixMax = sizeof("_4294967295") - 1;

// Host views of at most `max` bytes starting `skip` bytes into `descs`
// (which Queue has checked lie inside guest RAM).
std::vector<iovec> GuestIovecs(GuestMemory& mem,
                               std::span<const Descriptor> descs,
                               uint64_t skip, uint64_t max) {
  std::vector<iovec> iov;
  for (const Descriptor& d : descs) {
    if (max == 0) break;
    if (skip >= d.len) {
      skip -= d.len;
      continue;
    }
    uint64_t n = std::min<uint64_t>(d.len - skip, max);
    absl::StatusOr<std::span<uint8_t>> slice = mem.Slice(d.addr + skip, n);
    if (!slice.ok()) break;
    iov.push_back({.iov_base = slice->data(), .iov_len = n});
    max -= n;
    skip = 0;
  }
  return iov;
}

// "CONNECT <port>\n" -> port; nullopt for anything else.
std::optional<uint32_t> ParseConnectLine(const std::string& line) {
  static constexpr std::string_view kPrefix = "CONNECT ";
  if (line.size() < kPrefix.size() + 2 || !line.starts_with(kPrefix) ||
      line.back() != '\n') {
    return std::nullopt;
  }
  const char* begin = line.data() + kPrefix.size();
  const char* end = line.data() + line.size() - 1;
  if (end - begin > 10 || *begin < '0' || *begin > '9') return std::nullopt;
  uint64_t port = 0;
  auto [at, ec] = std::from_chars(begin, end, port);
  if (ec != std::errc() || at != end || port > 0xffff'fffe) {
    return std::nullopt;
  }
  return static_cast<uint32_t>(port);
}

timespec ToTimespec(std::chrono::steady_clock::time_point t) {
  auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(
                t.time_since_epoch())
                .count();
  if (ns <= 0) ns = 1;  // 0 would disarm the timer
  return {.tv_sec = static_cast<time_t>(ns / 1'000'000'000),
          .tv_nsec = static_cast<long>(ns % 1'000'000'000)};
}

}  // namespace

enum class ConnState {
  kAwaitingLine,  // host socket accepted, CONNECT line incomplete
  kConnecting,    // host-initiated: REQUEST for the guest, no RESPONSE yet
  kEstablished,
};

struct Vsock::Connection {
  uint64_t id = 0;
  UniqueFd fd;
  ConnState state = ConnState::kAwaitingLine;
  bool has_key = false;
  Key key{};  // (host port, guest port)
  std::string line;  // the CONNECT line so far

  // One-shot packets owed to the guest.
  bool send_request = false;
  bool send_response = false;
  bool send_credit_update = false;

  // Host -> guest. host_readable: a read may return data or EOF (set by
  // epoll, cleared by EAGAIN); while set the socket is not polled for
  // input.
  bool host_readable = false;
  bool host_eof = false;  // read returned 0; SHUTDOWN sent to the guest
  bool host_hup = false;  // both directions of the host socket are shut
  uint32_t tx_cnt = 0;    // payload bytes sent to the guest
  uint32_t peer_buf_alloc = 0;
  uint32_t peer_fwd_cnt = 0;

  // Guest -> host: what the host socket has not taken yet, and how many of
  // its first bytes are ours ("OK <port>\n"), not the guest's.
  std::vector<uint8_t> held;
  size_t held_off = 0;
  size_t uncounted = 0;
  uint32_t rx_cnt = 0;   // payload bytes received from the guest
  uint32_t fwd_cnt = 0;  // of those, written to the host socket
  uint32_t last_fwd_cnt_sent = 0;
  uint32_t guest_shutdown = 0;  // kShutdown* flags the guest sent
  bool host_wr_shut = false;

  bool in_epoll = false;
  uint32_t epoll_events = 0;
  bool in_rx_pending = false;
  std::optional<std::chrono::steady_clock::time_point> deadline;

  size_t held_bytes() const { return held.size() - held_off; }
  // §5.10.6.3.1: what the guest can take now.
  uint32_t PeerCredit() const {
    uint32_t in_flight = tx_cnt - peer_fwd_cnt;
    return in_flight > peer_buf_alloc ? 0 : peer_buf_alloc - in_flight;
  }
  // Whether data from the host socket may still go to the guest.
  bool CanReadHost() const {
    return state == ConnState::kEstablished && !host_eof &&
           !(guest_shutdown & vsock::kShutdownRcv);
  }
  bool HasDataForGuest() const {
    return CanReadHost() && host_readable && PeerCredit() > 0;
  }
  bool WantsRx() const {
    return send_request || send_response || send_credit_update ||
           HasDataForGuest();
  }
};

absl::StatusOr<std::unique_ptr<Vsock>> Vsock::Create(Options options,
                                                     EventLoop& loop) {
  if (options.guest_cid < vsock::kMinGuestCid ||
      options.guest_cid > vsock::kMaxGuestCid) {
    return absl::InvalidArgumentError(
        "guest CID " + std::to_string(options.guest_cid) + " is not in [3, " +
        std::to_string(vsock::kMaxGuestCid) + "]");
  }
  const std::string& path = options.uds_path;
  if (path.empty()) return absl::InvalidArgumentError("no socket path");
  if (path.size() + kPortSuffixMax >= sizeof(sockaddr_un::sun_path)) {
    return absl::InvalidArgumentError(
        "socket path " + path + " is too long (at most " +
        std::to_string(sizeof(sockaddr_un::sun_path) - 1 - kPortSuffixMax) +
        " bytes)");
  }
  if (options.max_connections == 0) {
    return absl::InvalidArgumentError("max_connections is 0");
  }
  struct stat st;
  if (::lstat(path.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode)) {
      return absl::InvalidArgumentError(path + " exists and is not a socket");
    }
    // A stale socket from an earlier run: nobody can be listening on it
    // for this VM.
    if (::unlink(path.c_str()) != 0) return ErrnoStatus("unlink", path, errno);
  }

  UniqueFd listener(
      ::socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!listener.valid()) return ErrnoStatus("socket", errno);
  sockaddr_un addr = {};
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, path.data(), path.size());
  if (::bind(listener.get(), reinterpret_cast<sockaddr*>(&addr),
             sizeof(addr)) != 0) {
    return ErrnoStatus("bind", path, errno);
  }
  // From here on the socket file exists: the destructor removes it.
  UniqueFd epoll(::epoll_create1(EPOLL_CLOEXEC));
  UniqueFd timer(::timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC));
  const int err = errno;
  std::unique_ptr<Vsock> v(new Vsock(std::move(options), loop,
                                     std::move(epoll), std::move(timer),
                                     std::move(listener)));
  if (!v->epoll_.valid()) return ErrnoStatus("epoll_create1", err);
  if (!v->timer_.valid()) return ErrnoStatus("timerfd_create", err);
  if (::listen(v->listener_.get(), 128) != 0) {
    return ErrnoStatus("listen", v->options_.uds_path, errno);
  }
  for (auto [fd, tag] : {std::pair{v->listener_.get(), kListenerTag},
                         std::pair{v->timer_.get(), kTimerTag}}) {
    epoll_event ev = {};
    ev.events = EPOLLIN;
    ev.data.u64 = tag;
    if (::epoll_ctl(v->epoll_.get(), EPOLL_CTL_ADD, fd, &ev) != 0) {
      return ErrnoStatus("epoll_ctl ADD", errno);
    }
  }
  Vsock* raw = v.get();
  absl::Status s = loop.Add(raw->poll_fd(), [raw] { raw->HandleHostEvents(); });
  if (!s.ok()) return s;
  return v;
}

Vsock::Vsock(Options options, EventLoop& loop, UniqueFd epoll, UniqueFd timer,
             UniqueFd listener)
    : options_(std::move(options)),
      loop_(loop),
      epoll_(std::move(epoll)),
      timer_(std::move(timer)),
      listener_(std::move(listener)) {
  absl::MutexLock lock(&mu_);
  next_id_ = kFirstConnectionId;
  spare_fd_.reset(::open("/dev/null", O_RDONLY | O_CLOEXEC));
}

Vsock::~Vsock() {
  {
    absl::MutexLock lock(&mu_);
    RemoveAll();
  }
  if (epoll_.valid()) (void)loop_.Remove(epoll_.get());
  ::unlink(options_.uds_path.c_str());
}

size_t Vsock::connection_count() const {
  absl::MutexLock lock(&mu_);
  return connections_.size();
}

void Vsock::ReadConfig(uint64_t offset, std::span<uint8_t> data) const {
  // §5.10.4: struct virtio_vsock_config { le64 guest_cid; }.
  std::array<uint8_t, 8> config;
  std::memcpy(config.data(), &options_.guest_cid, config.size());
  ReadConfigBytes(config, offset, data);
}

void Vsock::WriteConfig(uint64_t offset, std::span<const uint8_t>) {
  // §5.10.4: the configuration is read-only for the driver.
  SBX_LOG_EVERY_N_SEC(WARNING, 1)
      << "virtio-vsock: ignoring config write at " << offset;
}

absl::Status Vsock::Activate(GuestMemory& mem, uint64_t,
                             std::span<Queue> queues, Interrupt& interrupt) {
  if (queues.size() != 3 || !queues[vsock::kRxQueue].ready ||
      !queues[vsock::kTxQueue].ready || !queues[vsock::kEventQueue].ready) {
    return absl::FailedPreconditionError(
        "virtio-vsock: rx, tx and event queues must all be ready");
  }
  absl::MutexLock lock(&mu_);
  mem_ = &mem;
  rx_ = &queues[vsock::kRxQueue];
  tx_ = &queues[vsock::kTxQueue];
  event_ = &queues[vsock::kEventQueue];
  interrupt_ = &interrupt;
  // Host connections made before the driver was ready are waiting.
  ProcessRx();
  return absl::OkStatus();
}

void Vsock::Reset() {
  absl::MutexLock lock(&mu_);
  // The driver forgot every connection (§2.4); so do we.
  RemoveAll();
  mem_ = nullptr;
  rx_ = nullptr;
  tx_ = nullptr;
  event_ = nullptr;
  interrupt_ = nullptr;
  reset_event_pending_ = false;
  tx_stalled_ = false;
}

void Vsock::ProcessQueue(size_t index) {
  absl::MutexLock lock(&mu_);
  if (!active()) return;
  switch (index) {
    case vsock::kRxQueue:
      // New rx buffers: whatever waited for them can go.
      ProcessRx();
      if (tx_stalled_) {
        ProcessTx();
        ProcessRx();
      }
      break;
    case vsock::kTxQueue:
      ProcessTx();
      ProcessRx();
      break;
    case vsock::kEventQueue:
      ProcessEvents();
      break;
    default:
      break;
  }
}

void Vsock::SendTransportReset() {
  absl::MutexLock lock(&mu_);
  RemoveAll();
  if (!active()) return;
  reset_event_pending_ = true;
  ProcessEvents();
}

// ---------------------------------------------------------------------------
// Guest side.

void Vsock::ProcessTx() {
  tx_stalled_ = false;
  bool used = false;
  for (;;) {
    // A guest that sends packets needing an answer but takes no answers
    // stops being served until it does (its own connections wait).
    if (control_rx_.size() >= kMaxPendingControl) {
      tx_stalled_ = true;
      break;
    }
    std::optional<DescriptorChain> chain = tx_->Pop(*mem_);
    if (!chain) break;
    HandleTxPacket(*chain);
    absl::Status s = tx_->AddUsed(*mem_, chain->head_index(), 0);
    if (!s.ok()) {
      SBX_LOG_EVERY_N_SEC(WARNING, 1) << "virtio-vsock: tx: " << s;
      break;
    }
    used = true;
  }
  if (used && tx_->NeedsInterrupt(*mem_)) {
    interrupt_->Raise(Interrupt::kUsedBuffer);
  }
}

void Vsock::HandleTxPacket(const DescriptorChain& chain) {
  std::array<uint8_t, PacketHeader::kSize> raw;
  if (chain.readable_bytes() < raw.size() ||
      !chain.ReadReadable(*mem_, 0, raw).ok()) {
    SBX_LOG_EVERY_N_SEC(WARNING, 1)
        << "virtio-vsock: dropping a tx packet of "
        << chain.readable_bytes() << " bytes, shorter than its header";
    return;
  }
  const PacketHeader h = PacketHeader::Decode(raw);
  // §5.10.6.1: packets from the driver carry the guest's own CID and are
  // for the host; anything else is not ours to answer.
  if (h.src_cid != options_.guest_cid || h.dst_cid != vsock::kHostCid) {
    SBX_LOG_EVERY_N_SEC(WARNING, 1)
        << "virtio-vsock: dropping a packet from CID " << h.src_cid
        << " to CID " << h.dst_cid << " (guest CID is " << options_.guest_cid
        << ")";
    return;
  }
  Connection* c = Find({h.dst_port, h.src_port});
  const bool bad_len = h.len > kMaxPacketData ||
                       h.len > chain.readable_bytes() - PacketHeader::kSize;
  if (bad_len || h.type != vsock::kTypeStream) {
    SBX_LOG_EVERY_N_SEC(WARNING, 1)
        << "virtio-vsock: malformed packet (op " << h.op << ", type "
        << h.type << ", len " << h.len << ", "
        << chain.readable_bytes() - PacketHeader::kSize
        << " payload bytes in the chain) for port " << h.dst_port;
    if (h.op == vsock::kOpRst) {
      if (c != nullptr) Remove(*c);
    } else if (c != nullptr) {
      ResetConnection(*c);
    } else {
      QueueRstFor(h);
    }
    return;
  }
  if (c == nullptr) {
    if (h.op == vsock::kOpRequest) {
      HandleGuestRequest(h);
    } else if (h.op != vsock::kOpRst) {
      // §5.10.6.4: a packet for no connection is answered with RST.
      SBX_LOG_EVERY_N_SEC(INFO, 1)
          << "virtio-vsock: op " << h.op << " for no connection (host port "
          << h.dst_port << ", guest port " << h.src_port << ")";
      QueueRstFor(h);
    }
    return;
  }
  // §5.10.6.3: every packet carries the sender's credit information.
  c->peer_buf_alloc = h.buf_alloc;
  c->peer_fwd_cnt = h.fwd_cnt;
  switch (h.op) {
    case vsock::kOpRst:
      Remove(*c);
      return;
    case vsock::kOpResponse:
      if (c->state != ConnState::kConnecting || c->send_request) break;
      c->state = ConnState::kEstablished;
      ClearDeadline(*c);
      {
        std::string ok = "OK " + std::to_string(c->key.first) + "\n";
        c->held.assign(ok.begin(), ok.end());
        c->held_off = 0;
        c->uncounted = ok.size();
      }
      if (!FlushToHost(*c)) return;
      Update(*c);
      return;
    case vsock::kOpRw:
      if (c->state != ConnState::kEstablished ||
          (c->guest_shutdown & vsock::kShutdownSend)) {
        break;
      }
      HandleGuestData(*c, chain, h);
      return;
    case vsock::kOpCreditUpdate:
      // The new credit may let waiting host data go.
      Update(*c);
      return;
    case vsock::kOpCreditRequest:
      c->send_credit_update = true;
      Update(*c);
      return;
    case vsock::kOpShutdown:
      if (c->state != ConnState::kEstablished) break;
      HandleGuestShutdown(*c, h.flags);
      return;
    default:
      break;
  }
  SBX_LOG_EVERY_N_SEC(INFO, 1)
      << "virtio-vsock: unexpected op " << h.op << " on connection (host port "
      << c->key.first << ", guest port " << c->key.second << "): reset";
  ResetConnection(*c);
}

void Vsock::HandleGuestRequest(const PacketHeader& h) {
  if (connections_.size() >= options_.max_connections) {
    SBX_LOG_EVERY_N_SEC(WARNING, 1)
        << "virtio-vsock: refusing a guest connection to port " << h.dst_port
        << ": " << connections_.size() << " connections already";
    QueueRstFor(h);
    return;
  }
  const std::string path =
      options_.uds_path + "_" + std::to_string(h.dst_port);
  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  sockaddr_un addr = {};
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, path.data(), path.size());  // fits: Create
  // A unix-socket connect never waits: it succeeds or fails (EAGAIN when
  // the listener's backlog is full) at once.
  if (!fd.valid() || ::connect(fd.get(), reinterpret_cast<sockaddr*>(&addr),
                               sizeof(addr)) != 0) {
    SBX_LOG_EVERY_N_SEC(INFO, 1)
        << "virtio-vsock: guest connection to port " << h.dst_port
        << " refused: " << ErrnoStatus("connect", path, errno);
    QueueRstFor(h);
    return;
  }
  Connection& c = NewConnection(std::move(fd));
  SetKey(c, {h.dst_port, h.src_port});
  c.state = ConnState::kEstablished;
  c.peer_buf_alloc = h.buf_alloc;
  c.peer_fwd_cnt = h.fwd_cnt;
  c.send_response = true;
  Update(c);
}

void Vsock::HandleGuestData(Connection& c, const DescriptorChain& chain,
                            const PacketHeader& h) {
  if (h.len == 0) return;
  // The guest may have at most our buf_alloc in flight (§5.10.6.3.1):
  // what it sent and we have not yet written to the host socket.
  if (uint64_t{c.rx_cnt - c.fwd_cnt} + h.len > kConnBufferBytes) {
    SBX_LOG_EVERY_N_SEC(WARNING, 1)
        << "virtio-vsock: guest sent beyond its credit on connection (host "
           "port "
        << c.key.first << ", guest port " << c.key.second << "): reset";
    ResetConnection(c);
    return;
  }
  c.rx_cnt += h.len;
  uint64_t written = 0;
  if (c.held_bytes() == 0) {
    // The usual case: straight from guest memory into the host socket.
    std::vector<iovec> iov =
        GuestIovecs(*mem_, chain.readable(), PacketHeader::kSize, h.len);
    msghdr msg = {};
    msg.msg_iov = iov.data();
    msg.msg_iovlen = iov.size();
    ssize_t n;
    do {
      n = ::sendmsg(c.fd.get(), &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
    } while (n < 0 && errno == EINTR);
    if (n < 0 && errno != EAGAIN) {
      SBX_LOG_EVERY_N_SEC(INFO, 1)
          << "virtio-vsock: host socket of port " << c.key.first << ": "
          << ErrnoStatus("sendmsg", errno);
      ResetConnection(c);
      return;
    }
    written = n > 0 ? static_cast<uint64_t>(n) : 0;
    c.fwd_cnt += static_cast<uint32_t>(written);
  }
  if (written < h.len) {
    // Hold the rest until the host socket takes it (bounded above).
    size_t old = c.held.size();
    c.held.resize(old + (h.len - written));
    absl::Status s = chain.ReadReadable(
        *mem_, PacketHeader::kSize + written,
        std::span(c.held).subspan(old));
    if (!s.ok()) {
      ResetConnection(c);
      return;
    }
    if (!FlushToHost(c)) return;
  }
  Update(c);
}

void Vsock::HandleGuestShutdown(Connection& c, uint32_t flags) {
  const uint32_t added = flags & kShutdownBoth & ~c.guest_shutdown;
  c.guest_shutdown |= flags & kShutdownBoth;
  // The guest receives no more: neither do we read the host socket, and
  // its writer gets EPIPE. (No more sends: SHUT_WR once held data is out,
  // in Update.)
  if (added & vsock::kShutdownRcv) ::shutdown(c.fd.get(), SHUT_RD);
  Update(c);
}

void Vsock::QueueRstFor(const PacketHeader& h) {
  if (h.op == vsock::kOpRst) return;  // never answer a RST
  PacketHeader rst;
  rst.src_cid = vsock::kHostCid;
  rst.dst_cid = options_.guest_cid;
  rst.src_port = h.dst_port;
  rst.dst_port = h.src_port;
  rst.type = vsock::kTypeStream;
  rst.op = vsock::kOpRst;
  control_rx_.push_back(rst);
}

void Vsock::ProcessRx() {
  if (!active()) return;
  bool used = false;
  for (;;) {
    Connection* c = nullptr;
    if (control_rx_.empty()) {
      while (!rx_pending_.empty()) {
        auto it = connections_.find(rx_pending_.front());
        if (it != connections_.end() && it->second->WantsRx()) {
          c = it->second.get();
          break;
        }
        if (it != connections_.end()) it->second->in_rx_pending = false;
        rx_pending_.pop_front();
      }
      if (c == nullptr) break;  // nothing to send
    }
    std::optional<DescriptorChain> chain = rx_->Pop(*mem_);
    if (!chain) break;  // the rest waits for rx buffers
    uint32_t len = 0;
    if (chain->writable_bytes() < PacketHeader::kSize) {
      SBX_LOG_EVERY_N_SEC(WARNING, 1)
          << "virtio-vsock: rx buffer of " << chain->writable_bytes()
          << " bytes cannot hold a packet header";
    } else if (c == nullptr) {
      std::array<uint8_t, PacketHeader::kSize> raw = control_rx_.front().Encode();
      control_rx_.pop_front();
      if (chain->WriteWritable(*mem_, 0, raw).ok()) len = raw.size();
    } else {
      rx_pending_.pop_front();
      c->in_rx_pending = false;
      len = FillFromConnection(*c, *chain);
    }
    absl::Status s = rx_->AddUsed(*mem_, chain->head_index(), len);
    if (!s.ok()) {
      SBX_LOG_EVERY_N_SEC(WARNING, 1) << "virtio-vsock: rx: " << s;
      break;
    }
    used = true;
  }
  if (used && rx_->NeedsInterrupt(*mem_)) {
    interrupt_->Raise(Interrupt::kUsedBuffer);
  }
}

uint32_t Vsock::FillFromConnection(Connection& c,
                                   const DescriptorChain& chain) {
  PacketHeader h;
  h.src_cid = vsock::kHostCid;
  h.dst_cid = options_.guest_cid;
  h.src_port = c.key.first;
  h.dst_port = c.key.second;
  h.type = vsock::kTypeStream;
  h.buf_alloc = kConnBufferBytes;
  bool remove = false;
  if (c.send_request) {
    h.op = vsock::kOpRequest;
    c.send_request = false;
  } else if (c.send_response) {
    h.op = vsock::kOpResponse;
    c.send_response = false;
  } else if (c.HasDataForGuest() &&
             chain.writable_bytes() > PacketHeader::kSize) {
    const uint64_t max =
        std::min<uint64_t>({chain.writable_bytes() - PacketHeader::kSize,
                            c.PeerCredit(), kMaxPacketData});
    std::vector<iovec> iov =
        GuestIovecs(*mem_, chain.writable(), PacketHeader::kSize, max);
    ssize_t n;
    do {
      n = ::readv(c.fd.get(), iov.data(), static_cast<int>(iov.size()));
    } while (n < 0 && errno == EINTR);
    if (n > 0) {
      h.op = vsock::kOpRw;
      h.len = static_cast<uint32_t>(n);
      c.tx_cnt += h.len;
      // A short read drained the socket (we are its only reader): poll it
      // again rather than pop an rx buffer for nothing.
      if (static_cast<uint64_t>(n) < max) c.host_readable = false;
    } else if (n == 0) {
      // The host process shut down its sending side (or closed the
      // socket, when the socket is hung up both ways): pass it on.
      c.host_eof = true;
      c.host_readable = false;
      pollfd p = {.fd = c.fd.get(), .events = 0, .revents = 0};
      if (::poll(&p, 1, 0) == 1 && (p.revents & POLLHUP)) c.host_hup = true;
      h.op = vsock::kOpShutdown;
      h.flags = vsock::kShutdownSend | (c.host_hup ? vsock::kShutdownRcv : 0);
      // §5.10.6.5: after a full SHUTDOWN the guest answers RST.
      if (c.host_hup) SetDeadline(c, options_.close_timeout);
    } else if (n < 0 && errno != EAGAIN) {
      SBX_LOG_EVERY_N_SEC(INFO, 1)
          << "virtio-vsock: host socket of port " << c.key.first << ": "
          << ErrnoStatus("readv", errno);
      h.op = vsock::kOpRst;
      remove = true;
    } else {
      // Nothing after all: tell the guest our credit instead.
      c.host_readable = false;
      h.op = vsock::kOpCreditUpdate;
    }
  } else {
    h.op = vsock::kOpCreditUpdate;
  }
  // Every packet carries our credit (§5.10.6.3).
  c.send_credit_update = false;
  h.fwd_cnt = c.fwd_cnt;
  c.last_fwd_cnt_sent = c.fwd_cnt;
  std::array<uint8_t, PacketHeader::kSize> raw = h.Encode();
  absl::Status s = chain.WriteWritable(*mem_, 0, raw);
  if (remove) {
    Remove(c);
  } else {
    Update(c);
  }
  return s.ok() ? PacketHeader::kSize + h.len : 0;
}

void Vsock::ProcessEvents() {
  bool used = false;
  while (reset_event_pending_) {
    std::optional<DescriptorChain> chain = event_->Pop(*mem_);
    if (!chain) break;  // delivered when the driver posts a buffer
    uint32_t len = 0;
    // struct virtio_vsock_event { le32 id; } (§5.10.6.7).
    const uint32_t id = vsock::kEventTransportReset;
    if (chain->WriteWritable(
                 *mem_, 0,
                 std::span(reinterpret_cast<const uint8_t*>(&id), sizeof(id)))
            .ok()) {
      len = sizeof(id);
      reset_event_pending_ = false;
    } else {
      SBX_LOG_EVERY_N_SEC(WARNING, 1)
          << "virtio-vsock: event buffer of " << chain->writable_bytes()
          << " bytes is too small";
    }
    absl::Status s = event_->AddUsed(*mem_, chain->head_index(), len);
    if (!s.ok()) {
      SBX_LOG_EVERY_N_SEC(WARNING, 1) << "virtio-vsock: event: " << s;
      break;
    }
    used = true;
  }
  if (used && event_->NeedsInterrupt(*mem_)) {
    interrupt_->Raise(Interrupt::kUsedBuffer);
  }
}

// ---------------------------------------------------------------------------
// Host side.

void Vsock::HandleHostEvents() {
  absl::MutexLock lock(&mu_);
  epoll_event events[64];
  int n;
  do {
    n = ::epoll_wait(epoll_.get(), events, 64, 0);
  } while (n < 0 && errno == EINTR);
  for (int i = 0; i < n; ++i) {
    const uint64_t tag = events[i].data.u64;
    if (tag == kListenerTag) {
      AcceptHostConnections();
    } else if (tag == kTimerTag) {
      uint64_t expirations;
      (void)!::read(timer_.get(), &expirations, sizeof(expirations));
      ExpireTimeouts();
    } else if (auto it = connections_.find(tag); it != connections_.end()) {
      HandleConnectionEvents(*it->second, events[i].events);
    }
  }
  ProcessRx();
}

void Vsock::AcceptHostConnections() {
  // A bounded batch per call, so one busy listener cannot starve the rest.
  for (int i = 0; i < 64; ++i) {
    UniqueFd fd(::accept4(listener_.get(), nullptr, nullptr,
                          SOCK_NONBLOCK | SOCK_CLOEXEC));
    if (!fd.valid()) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      if ((errno == EMFILE || errno == ENFILE) && spare_fd_.valid()) {
        // Out of descriptors: refuse this connection (accept and close
        // it with the reserve) rather than leave it pending.
        SBX_LOG_EVERY_N_SEC(WARNING, 1)
            << "virtio-vsock: out of file descriptors: refusing a host "
               "connection";
        spare_fd_.reset();
        int refused = ::accept4(listener_.get(), nullptr, nullptr, SOCK_CLOEXEC);
        if (refused >= 0) ::close(refused);  // before the spare takes its slot
        spare_fd_.reset(::open("/dev/null", O_RDONLY | O_CLOEXEC));
        if (refused >= 0) continue;
        return;
      }
      if (errno != EAGAIN) {
        SBX_LOG_EVERY_N_SEC(WARNING, 1)
            << "virtio-vsock: " << ErrnoStatus("accept4", options_.uds_path, errno);
      }
      return;
    }
    if (connections_.size() >= options_.max_connections) {
      SBX_LOG_EVERY_N_SEC(WARNING, 1)
          << "virtio-vsock: refusing a host connection: "
          << connections_.size() << " connections already";
      continue;  // closes fd
    }
    Connection& c = NewConnection(std::move(fd));
    SetDeadline(c, options_.connect_timeout);
    Update(c);
  }
}

void Vsock::HandleConnectionEvents(Connection& c, uint32_t events) {
  if (events & EPOLLERR) {
    ResetConnection(c);
    return;
  }
  switch (c.state) {
    case ConnState::kAwaitingLine:
      if (events & (EPOLLIN | EPOLLHUP)) ReadConnectLine(c);
      return;
    case ConnState::kConnecting:
      // The host process gave up before the guest answered.
      if (events & EPOLLHUP) ResetConnection(c);
      return;
    case ConnState::kEstablished:
      if (events & EPOLLHUP) {
        // Stays readable (any data, then EOF) and is reported forever:
        // stop polling it; reads happen as the guest takes data.
        c.host_hup = true;
        c.host_readable = true;
      }
      if (events & EPOLLIN) c.host_readable = true;
      if ((events & (EPOLLOUT | EPOLLHUP)) && c.held_bytes() > 0 &&
          !FlushToHost(c)) {
        return;
      }
      Update(c);
      return;
  }
}

void Vsock::ReadConnectLine(Connection& c) {
  // Peek, then consume no more than the line: what follows it is already
  // the stream for the guest.
  char buf[kMaxConnectLine];
  const size_t room = kMaxConnectLine - c.line.size();
  ssize_t n;
  do {
    n = ::recv(c.fd.get(), buf, room, MSG_PEEK | MSG_DONTWAIT);
  } while (n < 0 && errno == EINTR);
  if (n < 0 && errno == EAGAIN) return;
  if (n <= 0) {
    Remove(c);  // closed, or failed, before a complete line
    return;
  }
  const char* nl = static_cast<const char*>(std::memchr(buf, '\n', n));
  const size_t take = nl != nullptr ? static_cast<size_t>(nl - buf) + 1
                                    : static_cast<size_t>(n);
  if (::recv(c.fd.get(), buf, take, MSG_DONTWAIT) !=
      static_cast<ssize_t>(take)) {
    Remove(c);
    return;
  }
  c.line.append(buf, take);
  if (nl == nullptr) {
    if (c.line.size() >= kMaxConnectLine) {
      SBX_LOG_EVERY_N_SEC(INFO, 1)
          << "virtio-vsock: host connection sent no CONNECT line in "
          << kMaxConnectLine << " bytes: closed";
      Remove(c);
    }
    return;
  }
  std::optional<uint32_t> port = ParseConnectLine(c.line);
  if (!port) {
    SBX_LOG_EVERY_N_SEC(INFO, 1)
        << "virtio-vsock: malformed CONNECT line from a host connection: "
           "closed";
    Remove(c);
    return;
  }
  c.line.clear();
  SetKey(c, {AllocatePort(*port), *port});
  c.state = ConnState::kConnecting;
  c.send_request = true;
  SetDeadline(c, options_.connect_timeout);
  Update(c);
}

bool Vsock::FlushToHost(Connection& c) {
  while (c.held_bytes() > 0) {
    ssize_t n = ::send(c.fd.get(), c.held.data() + c.held_off, c.held_bytes(),
                       MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) break;
      SBX_LOG_EVERY_N_SEC(INFO, 1)
          << "virtio-vsock: host socket of port " << c.key.first << ": "
          << ErrnoStatus("send", errno);
      ResetConnection(c);
      return false;
    }
    const size_t sent = static_cast<size_t>(n);
    const size_t ours = std::min(sent, c.uncounted);
    c.uncounted -= ours;
    c.fwd_cnt += static_cast<uint32_t>(sent - ours);
    c.held_off += sent;
  }
  if (c.held_off == c.held.size()) {
    c.held.clear();
    c.held.shrink_to_fit();
    c.held_off = 0;
  } else if (c.held_off > c.held.size() / 2) {
    c.held.erase(c.held.begin(), c.held.begin() + c.held_off);
    c.held_off = 0;
  }
  return true;
}

void Vsock::Update(Connection& c) {
  if (c.state == ConnState::kEstablished) {
    if ((c.guest_shutdown & vsock::kShutdownSend) && c.held_bytes() == 0 &&
        !c.host_wr_shut) {
      ::shutdown(c.fd.get(), SHUT_WR);
      c.host_wr_shut = true;
    }
    if (c.guest_shutdown == kShutdownBoth) {
      // §5.10.6.5: a clean disconnect ends with the peer's RST; held data
      // gets close_timeout to reach the host socket first.
      if (c.held_bytes() == 0) {
        ResetConnection(c);
        return;
      }
      if (!c.deadline) SetDeadline(c, options_.close_timeout);
    }
    // Tell the guest its freed space before it runs out of credit.
    const uint32_t unacked = c.rx_cnt - c.last_fwd_cnt_sent;
    if (c.fwd_cnt != c.last_fwd_cnt_sent &&
        (unacked >= kConnBufferBytes ||
         kConnBufferBytes - unacked < kMaxPacketData)) {
      c.send_credit_update = true;
    }
  }

  uint32_t want = 0;
  switch (c.state) {
    case ConnState::kAwaitingLine:
      want = EPOLLIN;
      break;
    case ConnState::kConnecting:
      break;  // EPOLLHUP only: the host process hung up
    case ConnState::kEstablished:
      if (c.CanReadHost() && !c.host_readable) want |= EPOLLIN;
      if (c.held_bytes() > 0) want |= EPOLLOUT;
      break;
  }
  if (c.host_hup && c.in_epoll) {
    ::epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, c.fd.get(), nullptr);
    c.in_epoll = false;
  } else if (c.in_epoll && want != c.epoll_events) {
    epoll_event ev = {};
    ev.events = want;
    ev.data.u64 = c.id;
    if (::epoll_ctl(epoll_.get(), EPOLL_CTL_MOD, c.fd.get(), &ev) == 0) {
      c.epoll_events = want;
    }
  }

  if (c.WantsRx() && !c.in_rx_pending) {
    c.in_rx_pending = true;
    rx_pending_.push_back(c.id);
  }
}

void Vsock::ExpireTimeouts() {
  const auto now = std::chrono::steady_clock::now();
  while (!deadlines_.empty() && deadlines_.begin()->first <= now) {
    const uint64_t id = deadlines_.begin()->second;
    deadlines_.erase(deadlines_.begin());
    auto it = connections_.find(id);
    if (it == connections_.end()) continue;
    Connection& c = *it->second;
    c.deadline.reset();
    SBX_LOG_EVERY_N_SEC(INFO, 1)
        << "virtio-vsock: connection (host port " << c.key.first
        << ", guest port " << c.key.second << ") timed out";
    ResetConnection(c);
  }
  ArmTimer();
}

void Vsock::SetDeadline(Connection& c, std::chrono::milliseconds after) {
  ClearDeadline(c);
  c.deadline = std::chrono::steady_clock::now() + after;
  deadlines_.insert({*c.deadline, c.id});
  ArmTimer();
}

void Vsock::ClearDeadline(Connection& c) {
  if (!c.deadline) return;
  deadlines_.erase({*c.deadline, c.id});
  c.deadline.reset();
}

void Vsock::ArmTimer() {
  itimerspec spec = {};
  if (!deadlines_.empty()) spec.it_value = ToTimespec(deadlines_.begin()->first);
  if (::timerfd_settime(timer_.get(), TFD_TIMER_ABSTIME, &spec, nullptr) != 0) {
    SBX_LOG_EVERY_N_SEC(ERROR, 1)
        << "virtio-vsock: " << ErrnoStatus("timerfd_settime", errno);
  }
}

// ---------------------------------------------------------------------------
// Connection table.

Vsock::Connection* Vsock::Find(const Key& key) {
  auto it = by_key_.find(key);
  if (it == by_key_.end()) return nullptr;
  return connections_.at(it->second).get();
}

Vsock::Connection& Vsock::NewConnection(UniqueFd fd) {
  auto c = std::make_unique<Connection>();
  c->id = next_id_++;
  c->fd = std::move(fd);
  epoll_event ev = {};
  ev.data.u64 = c->id;
  c->in_epoll =
      ::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, c->fd.get(), &ev) == 0;
  Connection& ref = *c;
  connections_.emplace(ref.id, std::move(c));
  return ref;
}

void Vsock::SetKey(Connection& c, const Key& key) {
  c.key = key;
  c.has_key = true;
  by_key_[key] = c.id;
}

void Vsock::ResetConnection(Connection& c) {
  // The guest knows the connection unless it is a host one that has not
  // reached it yet.
  if (c.has_key && !c.send_request) {
    PacketHeader rst;
    rst.src_cid = vsock::kHostCid;
    rst.dst_cid = options_.guest_cid;
    rst.src_port = c.key.first;
    rst.dst_port = c.key.second;
    rst.type = vsock::kTypeStream;
    rst.op = vsock::kOpRst;
    control_rx_.push_back(rst);
  }
  Remove(c);
}

void Vsock::Remove(Connection& c) {
  ClearDeadline(c);
  if (c.has_key) by_key_.erase(c.key);
  if (c.in_epoll) ::epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, c.fd.get(), nullptr);
  const uint64_t id = c.id;
  connections_.erase(id);  // closes the host socket; c is gone
}

void Vsock::RemoveAll() {
  for (auto& [id, c] : connections_) {
    if (c->in_epoll) {
      ::epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, c->fd.get(), nullptr);
    }
  }
  connections_.clear();
  by_key_.clear();
  rx_pending_.clear();
  control_rx_.clear();
  deadlines_.clear();
  if (timer_.valid()) ArmTimer();
}

uint32_t Vsock::AllocatePort(uint32_t guest_port) {
  // At most max_connections keys are taken, so this ends quickly.
  for (;;) {
    uint32_t port = next_port_;
    next_port_ = next_port_ == 0xffff'fffe ? kFirstEphemeralPort : next_port_ + 1;
    if (!by_key_.contains({port, guest_port})) return port;
  }
}

void Vsock::SaveState(sbx::vmstate::v1::VirtioDeviceState& state) const {
  // Connections are not saved: their host ends do not survive the VMM
  // (the restore sends TRANSPORT_RESET instead).
  state.mutable_vsock()->set_guest_cid(options_.guest_cid);
}

absl::Status Vsock::RestoreState(
    const sbx::vmstate::v1::VirtioDeviceState& state) {
  if (!state.has_vsock()) {
    return absl::FailedPreconditionError(
        "virtio-vsock: the snapshot's device is not a vsock device");
  }
  if (state.vsock().guest_cid() != options_.guest_cid) {
    return absl::FailedPreconditionError(
        "virtio-vsock: the snapshot's guest CID is " +
        std::to_string(state.vsock().guest_cid()) + ", this device's " +
        std::to_string(options_.guest_cid));
  }
  return absl::OkStatus();
}

}  // namespace sbx::vmm::virtio
