#include "sandboxd/metrics.h"

#include <netdb.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "base/logging.h"
#include "base/status.h"

namespace sbx::sandboxd {
namespace {

void AppendHistogram(std::string& out, const char* name, const char* help, const Histogram& h) {
  absl::StrAppend(&out, "# HELP ", name, " ", help, "\n# TYPE ", name, " histogram\n");
  for (size_t i = 0; i < sizeof(Histogram::kBounds) / sizeof(Histogram::kBounds[0]); ++i) {
    absl::StrAppend(&out, name, "_bucket{le=\"", Histogram::kBounds[i], "\"} ", h.buckets[i], "\n");
  }
  absl::StrAppend(&out, name, "_bucket{le=\"+Inf\"} ", h.count, "\n", name, "_sum ",
                  absl::StrFormat("%.6f", h.sum), "\n", name, "_count ", h.count, "\n");
}

void AppendCounter(std::string& out, const char* name, const char* help, uint64_t value) {
  absl::StrAppend(&out, "# HELP ", name, " ", help, "\n# TYPE ", name, " counter\n", name, " ",
                  value, "\n");
}

void WriteAll(int fd, const std::string& data) {
  size_t done = 0;
  while (done < data.size()) {
    ssize_t n = ::send(fd, data.data() + done, data.size() - done, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;
    done += static_cast<size_t>(n);
  }
}

}  // namespace

std::string RenderMetrics(const ManagerStats& stats) {
  std::string out;
  absl::StrAppend(&out, "# HELP sbx_sandboxes Sandboxes by state.\n# TYPE sbx_sandboxes gauge\n");
  for (int s = sbx::v1::CREATING; s <= sbx::v1::PAUSING; ++s) {
    const auto state = static_cast<sbx::v1::SandboxState>(s);
    auto it = stats.sandboxes_by_state.find(state);
    std::string name = sbx::v1::SandboxState_Name(state);
    for (char& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    absl::StrAppend(&out, "sbx_sandboxes{state=\"", name, "\"} ",
                    it == stats.sandboxes_by_state.end() ? 0 : it->second, "\n");
  }
  AppendCounter(out, "sbx_creates_total", "Sandboxes created.", stats.creates);
  AppendCounter(out, "sbx_create_failures_total", "Creates that failed.", stats.create_failures);
  AppendCounter(out, "sbx_wakes_total", "Sandboxes woken.", stats.wakes);
  AppendCounter(out, "sbx_wake_failures_total", "Wakes that failed.", stats.wake_failures);
  AppendCounter(out, "sbx_sleeps_total", "Sandboxes put to sleep.", stats.sleeps);
  AppendCounter(out, "sbx_sleep_failures_total", "Sleeps that failed.", stats.sleep_failures);
  AppendCounter(out, "sbx_restores_total", "VMs started from a snapshot.", stats.restores);
  AppendCounter(out, "sbx_vmm_deaths_total", "VMMs that ended unexpectedly.", stats.vmm_deaths);
  AppendHistogram(out, "sbx_create_seconds", "Create latency.", stats.create_seconds);
  AppendHistogram(out, "sbx_wake_seconds", "Wake latency.", stats.wake_seconds);
  AppendHistogram(out, "sbx_exec_start_seconds", "Exec latency until the process started.",
                  stats.exec_seconds);
  return out;
}

absl::StatusOr<std::unique_ptr<MetricsServer>> MetricsServer::Start(
    const std::string& addr, std::function<std::string()> render) {
  UniqueFd fd;
  if (absl::StartsWith(addr, "unix://")) {
    const std::string path = addr.substr(7);
    sockaddr_un sa{};
    if (path.empty() || path.size() >= sizeof(sa.sun_path)) {
      return absl::InvalidArgumentError(absl::StrCat("bad metrics socket path ", path));
    }
    ::unlink(path.c_str());
    fd = UniqueFd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sa.sun_family = AF_UNIX;
    std::memcpy(sa.sun_path, path.data(), path.size());
    if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) != 0) {
      return ErrnoStatus("bind", path, errno);
    }
  } else if (absl::StartsWith(addr, "tcp://")) {
    const std::string hostport = addr.substr(6);
    const size_t colon = hostport.rfind(':');
    if (colon == std::string::npos) {
      return absl::InvalidArgumentError(absl::StrCat("metrics address ", addr, ": no port"));
    }
    std::string host = hostport.substr(0, colon);
    if (host.size() >= 2 && host.front() == '[') host = host.substr(1, host.size() - 2);
    addrinfo hints{};
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE;
    addrinfo* res = nullptr;
    if (int rc = ::getaddrinfo(host.empty() ? nullptr : host.c_str(),
                               hostport.substr(colon + 1).c_str(), &hints, &res);
        rc != 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("metrics address ", addr, ": ", ::gai_strerror(rc)));
    }
    fd = UniqueFd(::socket(res->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0));
    int one = 1;
    ::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    int rc = ::bind(fd.get(), res->ai_addr, res->ai_addrlen);
    int err = errno;
    ::freeaddrinfo(res);
    if (rc != 0) return ErrnoStatus("bind", addr, err);
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("metrics address ", addr, ": use tcp://HOST:PORT or unix:///PATH"));
  }
  if (::listen(fd.get(), 16) != 0) return ErrnoStatus("listen", addr, errno);
  std::unique_ptr<MetricsServer> server(new MetricsServer(std::move(fd), std::move(render)));
  if (!server->stop_.valid()) return ErrnoStatus("eventfd", errno);
  server->thread_ = std::thread([s = server.get()] { s->Serve(); });
  return server;
}

MetricsServer::MetricsServer(UniqueFd listener, std::function<std::string()> render)
    : listener_(std::move(listener)),
      stop_(::eventfd(0, EFD_CLOEXEC)),
      render_(std::move(render)) {}

MetricsServer::~MetricsServer() {
  uint64_t one = 1;
  if (stop_.valid()) (void)!::write(stop_.get(), &one, sizeof(one));
  if (thread_.joinable()) thread_.join();
}

void MetricsServer::Serve() {
  for (;;) {
    pollfd fds[2] = {{listener_.get(), POLLIN, 0}, {stop_.get(), POLLIN, 0}};
    if (::poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      return;
    }
    if (fds[1].revents != 0) return;
    UniqueFd client(::accept4(listener_.get(), nullptr, nullptr, SOCK_CLOEXEC));
    if (!client.valid()) continue;
    // One short request; a client that sends nothing for 2 s is dropped.
    timeval tv{2, 0};
    ::setsockopt(client.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    char buf[2048];
    ssize_t n = ::recv(client.get(), buf, sizeof(buf) - 1, 0);
    if (n <= 0) continue;
    buf[n] = '\0';
    const bool ok = std::strncmp(buf, "GET /metrics", 12) == 0;
    const std::string body = ok ? render_() : "not found: GET /metrics\n";
    WriteAll(client.get(),
             absl::StrCat("HTTP/1.0 ", ok ? "200 OK" : "404 Not Found",
                          "\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: ",
                          body.size(), "\r\nConnection: close\r\n\r\n", body));
  }
}

}  // namespace sbx::sandboxd
