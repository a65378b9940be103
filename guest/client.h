#ifndef SBX_GUEST_CLIENT_H_
#define SBX_GUEST_CLIENT_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "base/unique_fd.h"
#include "guest/protocol.h"

// The host side of the agent protocol: what sandboxd and the tests use to
// run commands and move files in a guest.

namespace sbx::agent {

// Opens one connection to the agent per operation.
class Dialer {
 public:
  virtual ~Dialer() = default;
  virtual absl::StatusOr<UniqueFd> Dial() = 0;
};

// The agent listening on a unix socket (host tests).
std::unique_ptr<Dialer> NewUnixDialer(std::string path);
// The agent behind sbx-vmm's vsock device: connects to the device's unix
// socket and asks for guest port `port` ("CONNECT <port>\n" -> "OK ...\n").
std::unique_ptr<Dialer> NewVsockDialer(std::string uds_path, uint32_t port);

// A running exec (or attach): output events in order, stdin, signals.
class ExecStream {
 public:
  struct Event {
    enum class Kind { kStdout, kStderr, kExited };
    Kind kind;
    std::string data;
    uint64_t dropped_before = 0;
    Exited exited;  // kExited
  };

  uint64_t process_id() const { return process_id_; }
  int32_t pid() const { return pid_; }

  // The next event; kExited is the last. An error if the agent reported
  // one or the connection broke.
  absl::StatusOr<Event> Next();

  absl::Status WriteStdin(std::string_view data);
  absl::Status CloseStdin();
  absl::Status Signal(int signal);
  // Drops the connection: a foreground process is killed by the agent, a
  // background one goes on.
  void Close() { fd_.reset(); }
  // Breaks the connection from another thread (a Next() blocked there
  // returns an error): what Close does, safe while the stream is in use.
  void Abort();

 private:
  friend class Client;
  ExecStream(UniqueFd fd, uint64_t process_id, int32_t pid)
      : fd_(std::move(fd)), process_id_(process_id), pid_(pid) {}

  UniqueFd fd_;
  uint64_t process_id_;
  int32_t pid_;
};

// Everything a completed exec produced.
struct ExecResult {
  std::string stdout_data;
  std::string stderr_data;
  Exited exited;
};

class Client {
 public:
  explicit Client(std::unique_ptr<Dialer> dialer)
      : dialer_(std::move(dialer)) {}

  absl::StatusOr<Pong> Ping();

  // Starts a process; read its output from the stream.
  absl::StatusOr<std::unique_ptr<ExecStream>> Start(const Exec& exec);
  // Re-attaches to a background process.
  absl::StatusOr<std::unique_ptr<ExecStream>> Attach(uint64_t process_id);
  // Runs to completion and collects the output (for small outputs; stream
  // large ones with Start).
  absl::StatusOr<ExecResult> Run(const Exec& exec);
  // Shorthand: Run with argv.
  absl::StatusOr<ExecResult> Run(std::vector<std::string> argv);

  absl::StatusOr<std::vector<ProcessList::Process>> ListProcesses();
  absl::Status Signal(uint64_t process_id, int signal);

  // Streams a file to `sink` chunk by chunk; returns its FileInfo.
  absl::StatusOr<FileInfo> ReadFile(
      const ReadFile& request,
      const std::function<absl::Status(std::string_view)>& sink);
  absl::StatusOr<std::string> ReadFileToString(const std::string& path);

  // Streams a file from `source`, which fills its buffer and returns how
  // many bytes it put there (0 = end). Returns the bytes written.
  absl::StatusOr<uint64_t> WriteFile(
      const WriteFile& request,
      const std::function<absl::StatusOr<size_t>(char* buffer, size_t size)>&
          source);
  absl::Status WriteFileFromString(const std::string& path,
                                   std::string_view data, uint32_t mode = 0);

  absl::StatusOr<FileInfo> Stat(const std::string& path);
  absl::StatusOr<std::vector<FileInfo>> ListDir(const std::string& path);
  absl::Status Remove(const std::string& path, bool recursive);
  absl::Status Rename(const std::string& from, const std::string& to);
  absl::Status MakeDir(const std::string& path, uint32_t mode, bool parents);
  absl::Status Sync();
  absl::Status AfterRestore(std::string_view entropy, int64_t unix_time_ns);
  // Makes the writable disk `device` (/dev/vd[a-z]) the root's upper layer
  // in a guest booted with sbx.upper=late (AttachDisk in
  // proto/agent.proto). Returns once the new root is in place.
  absl::Status AttachDisk(const std::string& device);
  absl::Status Shutdown();

 private:
  // Dials and sends `request`.
  absl::StatusOr<UniqueFd> Open(const Request& request);
  absl::StatusOr<std::unique_ptr<ExecStream>> OpenStream(
      const Request& request);

  std::unique_ptr<Dialer> dialer_;
};

// Reads one response; an Error frame becomes its status, a closed
// connection an UNAVAILABLE one.
absl::StatusOr<Response> ReadResponse(int fd);

}  // namespace sbx::agent

#endif  // SBX_GUEST_CLIENT_H_
