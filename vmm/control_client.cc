#include "vmm/control_client.h"

#include <sys/socket.h>
#include <sys/un.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "base/status.h"
#include "guest/frame.h"

namespace sbx::vmm {
namespace {

namespace control = ::sbx::control::v1;

absl::Status ToStatus(const control::Response& response) {
  return absl::Status(static_cast<absl::StatusCode>(response.code()),
                      response.message());
}

}  // namespace

absl::StatusOr<std::unique_ptr<ControlClient>> ControlClient::Connect(
    const std::string& path) {
  sockaddr_un addr = {};
  addr.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof(addr.sun_path)) {
    return absl::InvalidArgumentError(
        absl::StrCat("control socket path too long: ", path));
  }
  std::memcpy(addr.sun_path, path.data(), path.size());
  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd.valid()) return ErrnoStatus("socket", path, errno);
  if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    return absl::UnavailableError(
        absl::StrCat("connect ", path, ": ", std::strerror(errno)));
  }
  return std::unique_ptr<ControlClient>(new ControlClient(std::move(fd)));
}

absl::StatusOr<control::Response> ControlClient::Call(
    const control::Request& request) {
  absl::Status sent = agent::WriteFrame(fd_.get(), request);
  if (!sent.ok()) {
    return absl::UnavailableError(absl::StrCat("control: ", sent.message()));
  }
  control::Response response;
  absl::StatusOr<bool> got = agent::ReadFrame(fd_.get(), response);
  if (!got.ok()) {
    return absl::UnavailableError(
        absl::StrCat("control: ", got.status().message()));
  }
  if (!*got) return absl::UnavailableError("control: the VMM closed the connection");
  return response;
}

absl::Status ControlClient::Pause() {
  control::Request request;
  request.mutable_pause();
  absl::StatusOr<control::Response> r = Call(request);
  return r.ok() ? ToStatus(*r) : r.status();
}

absl::Status ControlClient::Resume() {
  control::Request request;
  request.mutable_resume();
  absl::StatusOr<control::Response> r = Call(request);
  return r.ok() ? ToStatus(*r) : r.status();
}

absl::Status ControlClient::Shutdown() {
  control::Request request;
  request.mutable_shutdown();
  absl::StatusOr<control::Response> r = Call(request);
  return r.ok() ? ToStatus(*r) : r.status();
}

absl::StatusOr<control::SnapshotResult> ControlClient::Snapshot(
    const std::string& dir) {
  control::Request request;
  request.mutable_snapshot()->set_dir(dir);
  request.mutable_snapshot()->set_kind(control::FULL);
  absl::StatusOr<control::Response> r = Call(request);
  if (!r.ok()) return r.status();
  if (r->code() != 0) return ToStatus(*r);
  return r->snapshot();
}

absl::StatusOr<control::SnapshotResult> ControlClient::SnapshotDiff(
    const std::string& dir, const std::string& base_dir) {
  control::Request request;
  request.mutable_snapshot()->set_dir(dir);
  request.mutable_snapshot()->set_kind(control::DIFF);
  request.mutable_snapshot()->set_base_dir(base_dir);
  absl::StatusOr<control::Response> r = Call(request);
  if (!r.ok()) return r.status();
  if (r->code() != 0) return ToStatus(*r);
  return r->snapshot();
}

absl::StatusOr<control::Stats> ControlClient::Stats() {
  control::Request request;
  request.mutable_stats();
  absl::StatusOr<control::Response> r = Call(request);
  if (!r.ok()) return r.status();
  if (r->code() != 0) return ToStatus(*r);
  return r->stats();
}

}  // namespace sbx::vmm
