#ifndef SBX_SANDBOXD_CTL_COMMANDS_H_
#define SBX_SANDBOXD_CTL_COMMANDS_H_

// sandboxctl's commands over the sbx.v1 gRPC API. They take the stubs and
// the process's streams as parameters, so tests drive them against an
// in-process server.

#include <functional>
#include <memory>
#include <ostream>
#include <string>

#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "grpcpp/channel.h"
#include "sandboxd/ctl/args.h"
#include "sbx/v1/sandbox.grpc.pb.h"

namespace sbx::ctl {

// Exit statuses of sandboxctl itself (run/exec exit with the command's).
inline constexpr int kExitError = 1;
inline constexpr int kExitUsage = 2;
inline constexpr int kExitTimeout = 124;      // as coreutils timeout
inline constexpr int kExitInterrupted = 130;  // 128 + SIGINT

// The process's side of a command.
struct Io {
  std::ostream* out = nullptr;  // stdout: output, ids, tables, JSON
  std::ostream* err = nullptr;  // stderr: errors, progress
  // stdin; forwarded to run/exec commands unless it is a terminal, and the
  // source of `cp - ID:/path`. -1: none.
  int in_fd = -1;
  bool in_is_tty = false;
  bool err_is_tty = false;  // progress lines only on a terminal
  // Readable once per Ctrl-C (one byte each; main's SIGINT handler writes
  // them). run/exec: the first forwards SIGINT to the command, the second
  // stops waiting. -1: none.
  int interrupt_fd = -1;
  std::function<absl::Time()> now = [] { return absl::Now(); };
  absl::TimeZone tz = absl::LocalTimeZone();
};

// Where the daemon is and how to reach it.
struct Api {
  sbx::v1::Sandboxes::StubInterface* sandboxes = nullptr;
  sbx::v1::Templates::StubInterface* templates = nullptr;
  std::string token;  // sent as "authorization: Bearer TOKEN" when set
  std::string addr;   // for messages
  bool addr_is_default = false;
  // The channel, to tell "no daemon there" from a daemon's own UNAVAILABLE
  // (a sandbox's VM unreachable). Null: every UNAVAILABLE is the daemon's.
  std::shared_ptr<grpc::Channel> channel;
};

// Runs `o.command` (not kNone, not help); returns the exit status. Errors
// are one line on io.err: "sandboxctl: <what>: <message>".
int RunCommand(const Options& o, const Api& api, Io& io);

// A gRPC channel to "unix:///path", "tcp://HOST:PORT" (or a plain gRPC
// target). InvalidArgument for an unknown scheme.
absl::StatusOr<std::shared_ptr<grpc::Channel>> Connect(const std::string& addr);

}  // namespace sbx::ctl

#endif  // SBX_SANDBOXD_CTL_COMMANDS_H_
