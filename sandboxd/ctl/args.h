#ifndef SBX_SANDBOXD_CTL_ARGS_H_
#define SBX_SANDBOXD_CTL_ARGS_H_

// sandboxctl's command line, parsed by hand into one Options struct: every
// command's flags, `--` before a command to run, K=V lists, durations.

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "sbx/v1/sandbox.pb.h"

namespace sbx::ctl {

inline constexpr char kDefaultAddr[] = "unix:///run/sbx/sandboxd.sock";

enum class Command {
  kNone,  // no command: print the general usage
  kRun,
  kCreate,
  kExec,
  kCp,
  kLs,
  kStat,
  kCat,
  kRmFile,
  kList,
  kInspect,
  kSleep,
  kWake,
  kSetTimeouts,
  kRm,
  kTemplateBuild,
  kTemplateLs,
  kTemplateRm,
  kTemplateInspect,
};

struct Options {
  // Global.
  std::string addr = kDefaultAddr;
  bool addr_explicit = false;  // from --addr or SBX_ADDR
  std::string token;           // --token or SBX_TOKEN
  bool json = false;
  std::string state_dir;  // SBX_STATE_DIR: for an embedded sandboxd

  Command command = Command::kNone;
  bool help = false;  // --help: print the command's usage, exit 0

  // Sandbox and template shape (run, create, template build).
  std::string template_name;
  uint32_t cpus = 0;
  uint64_t memory_mib = 0;
  uint64_t disk_mib = 0;
  std::string kernel;  // template build
  std::string rootfs;  // template build

  // create.
  std::optional<absl::Duration> idle_timeout;
  std::optional<absl::Duration> ttl;
  std::map<std::string, std::string> labels;  // also list's filter
  std::string idempotency_key;

  // run, exec (create: -e sets the sandbox's env).
  std::optional<absl::Duration> timeout;
  std::map<std::string, std::string> env;
  std::string cwd;
  bool keep = false;
  bool background = false;
  std::vector<std::string> argv;  // the command to run

  // list.
  std::vector<sbx::v1::SandboxState> states;

  // Sandbox ids (exec, ls, stat, cat, rmfile, inspect, sleep, wake, rm) or
  // template names (template rm, template inspect, template build).
  std::vector<std::string> ids;
  std::string path;        // ls, stat, cat, rmfile
  bool recursive = false;  // rmfile -r
  std::string src, dst;    // cp
};

// Looks up an environment variable; nullptr if unset. Tests pass a map.
using GetEnv = std::function<const char*(const char*)>;

// Parses argv[1..] (argv[0] excluded). A usage error is InvalidArgument
// with a one-line message; `*command` is set to the command parsed so far
// (to print its usage) even on error.
absl::StatusOr<Options> ParseArgs(const std::vector<std::string>& args,
                                  const GetEnv& getenv,
                                  Command* command = nullptr);

// The --help text of `command` (kNone: the overview of all commands).
std::string Usage(Command command);

// "30s", "5m", "1h30m" (absl::ParseDuration; a bare number is seconds).
absl::StatusOr<absl::Duration> ParseDurationFlag(std::string_view text);

// "512", "512M", "2G" (MiB unless suffixed with M/MiB or G/GiB).
absl::StatusOr<uint64_t> ParseMib(std::string_view text);

}  // namespace sbx::ctl

#endif  // SBX_SANDBOXD_CTL_ARGS_H_
