#include "sandboxd/ctl/args.h"

#include <cctype>
#include <limits>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "base/status_macros.h"

namespace sbx::ctl {
namespace {

using Handler = std::function<absl::Status(Options&, const std::string&)>;

struct Flag {
  std::vector<std::string> names;  // "--cpus", "-c"
  bool takes_value;
  Handler handle;
};

absl::Status Usage(std::string message) {
  return absl::InvalidArgumentError(std::move(message));
}

absl::Status ParseKeyValue(const std::string& flag, const std::string& text,
                           std::map<std::string, std::string>* out) {
  size_t eq = text.find('=');
  if (eq == std::string::npos || eq == 0) {
    return Usage(absl::StrCat(flag, ": expected KEY=VALUE, got \"", text, "\""));
  }
  (*out)[text.substr(0, eq)] = text.substr(eq + 1);
  return absl::OkStatus();
}

template <typename T>
absl::Status ParsePositive(const std::string& flag, const std::string& text,
                           T* out) {
  uint64_t v = 0;
  if (!absl::SimpleAtoi(text, &v) || v == 0 ||
      v > static_cast<uint64_t>(std::numeric_limits<T>::max())) {
    return Usage(absl::StrCat(flag, ": expected a positive number, got \"",
                              text, "\""));
  }
  *out = static_cast<T>(v);
  return absl::OkStatus();
}

Flag ValueFlag(std::vector<std::string> names, Handler h) {
  return Flag{std::move(names), true, std::move(h)};
}
Flag BoolFlag(std::vector<std::string> names,
              std::function<void(Options&)> set) {
  return Flag{std::move(names), false,
              [set = std::move(set)](Options& o, const std::string&) {
                set(o);
                return absl::OkStatus();
              }};
}

Flag DurationFlag(std::string name, std::optional<absl::Duration> Options::*field) {
  return ValueFlag({name}, [name, field](Options& o, const std::string& v) {
    absl::StatusOr<absl::Duration> d = ParseDurationFlag(v);
    if (!d.ok()) return Usage(absl::StrCat(name, ": ", d.status().message()));
    o.*field = *d;
    return absl::OkStatus();
  });
}

std::vector<Flag> GlobalFlags() {
  return {
      ValueFlag({"--addr"},
                [](Options& o, const std::string& v) {
                  if (v.empty()) return Usage("--addr: empty address");
                  o.addr = v;
                  o.addr_explicit = true;
                  return absl::OkStatus();
                }),
      ValueFlag({"--token"},
                [](Options& o, const std::string& v) {
                  o.token = v;
                  return absl::OkStatus();
                }),
      BoolFlag({"--json"}, [](Options& o) { o.json = true; }),
      BoolFlag({"--help", "-h"}, [](Options& o) { o.help = true; }),
  };
}

std::vector<Flag> ShapeFlags(bool with_template) {
  std::vector<Flag> flags = {
      ValueFlag({"--cpus"},
                [](Options& o, const std::string& v) {
                  return ParsePositive("--cpus", v, &o.cpus);
                }),
      ValueFlag({"--memory"},
                [](Options& o, const std::string& v) {
                  absl::StatusOr<uint64_t> m = ParseMib(v);
                  if (!m.ok()) return Usage(absl::StrCat("--memory: ", m.status().message()));
                  o.memory_mib = *m;
                  return absl::OkStatus();
                }),
      ValueFlag({"--disk"},
                [](Options& o, const std::string& v) {
                  absl::StatusOr<uint64_t> m = ParseMib(v);
                  if (!m.ok()) return Usage(absl::StrCat("--disk: ", m.status().message()));
                  o.disk_mib = *m;
                  return absl::OkStatus();
                }),
  };
  if (with_template) {
    flags.push_back(ValueFlag({"--template", "-t"},
                              [](Options& o, const std::string& v) {
                                o.template_name = v;
                                return absl::OkStatus();
                              }));
  }
  return flags;
}

Flag EnvFlag() {
  return ValueFlag({"--env", "-e"}, [](Options& o, const std::string& v) {
    return ParseKeyValue("-e", v, &o.env);
  });
}
Flag LabelFlag() {
  return ValueFlag({"--label", "-l"}, [](Options& o, const std::string& v) {
    return ParseKeyValue("-l", v, &o.labels);
  });
}
Flag CwdFlag() {
  return ValueFlag({"--workdir", "-w"}, [](Options& o, const std::string& v) {
    o.cwd = v;
    return absl::OkStatus();
  });
}

// How a command takes its non-flag arguments.
struct CommandSpec {
  Command command;
  std::vector<Flag> flags;
  // The command runs a CMD: after `fixed` positionals (exec: the ID) the
  // first non-flag argument, or everything after `--`, is the command.
  bool takes_argv = false;
  size_t fixed = 0;
};

CommandSpec SpecFor(Command c) {
  CommandSpec s{c, {}};
  auto add = [&s](std::vector<Flag> flags) {
    for (Flag& f : flags) s.flags.push_back(std::move(f));
  };
  switch (c) {
    case Command::kRun:
      add(ShapeFlags(true));
      add({DurationFlag("--timeout", &Options::timeout), EnvFlag(), CwdFlag(),
           BoolFlag({"--keep"}, [](Options& o) { o.keep = true; })});
      s.takes_argv = true;
      break;
    case Command::kCreate:
      add(ShapeFlags(true));
      add({DurationFlag("--idle-timeout", &Options::idle_timeout),
           DurationFlag("--ttl", &Options::ttl), LabelFlag(), EnvFlag(),
           ValueFlag({"--idempotency-key"},
                     [](Options& o, const std::string& v) {
                       o.idempotency_key = v;
                       return absl::OkStatus();
                     })});
      break;
    case Command::kSetTimeouts:
      add({DurationFlag("--idle-timeout", &Options::idle_timeout),
           DurationFlag("--ttl", &Options::ttl)});
      break;
    case Command::kExec:
      add({DurationFlag("--timeout", &Options::timeout), EnvFlag(), CwdFlag(),
           BoolFlag({"--background", "-d"},
                    [](Options& o) { o.background = true; })});
      s.takes_argv = true;
      s.fixed = 1;
      break;
    case Command::kRmFile:
      add({BoolFlag({"--recursive", "-r"},
                    [](Options& o) { o.recursive = true; })});
      break;
    case Command::kList:
      add({LabelFlag(),
           ValueFlag({"--state"}, [](Options& o, const std::string& v) {
             for (absl::string_view part : absl::StrSplit(v, ',')) {
               sbx::v1::SandboxState st;
               std::string name = absl::AsciiStrToUpper(part);
               if (!sbx::v1::SandboxState_Parse(name, &st) ||
                   st == sbx::v1::SANDBOX_STATE_UNSPECIFIED) {
                 return Usage(absl::StrCat(
                     "--state: unknown state \"", std::string(part),
                     "\" (creating, running, sleeping, waking, pausing, "
                     "deleting, failed)"));
               }
               o.states.push_back(st);
             }
             return absl::OkStatus();
           })});
      break;
    case Command::kTemplateBuild:
      add(ShapeFlags(false));
      add({ValueFlag({"--kernel"},
                     [](Options& o, const std::string& v) {
                       o.kernel = v;
                       return absl::OkStatus();
                     }),
           ValueFlag({"--rootfs"}, [](Options& o, const std::string& v) {
             o.rootfs = v;
             return absl::OkStatus();
           })});
      break;
    default:
      break;
  }
  add(GlobalFlags());
  return s;
}

const Flag* FindFlag(const std::vector<Flag>& flags, std::string_view name) {
  for (const Flag& f : flags) {
    for (const std::string& n : f.names) {
      if (n == name) return &f;
    }
  }
  return nullptr;
}

std::string CommandName(Command c) {
  switch (c) {
    case Command::kNone: return "";
    case Command::kRun: return "run";
    case Command::kCreate: return "create";
    case Command::kExec: return "exec";
    case Command::kCp: return "cp";
    case Command::kLs: return "ls";
    case Command::kStat: return "stat";
    case Command::kCat: return "cat";
    case Command::kRmFile: return "rmfile";
    case Command::kList: return "list";
    case Command::kInspect: return "inspect";
    case Command::kSleep: return "sleep";
    case Command::kWake: return "wake";
    case Command::kSetTimeouts: return "set-timeouts";
    case Command::kRm: return "rm";
    case Command::kTemplateBuild: return "template build";
    case Command::kTemplateLs: return "template ls";
    case Command::kTemplateRm: return "template rm";
    case Command::kTemplateInspect: return "template inspect";
  }
  return "";
}

std::optional<Command> LookupCommand(std::string_view name) {
  static const std::map<std::string_view, Command> kCommands = {
      {"run", Command::kRun},         {"create", Command::kCreate},
      {"exec", Command::kExec},       {"cp", Command::kCp},
      {"ls", Command::kLs},           {"stat", Command::kStat},
      {"cat", Command::kCat},         {"rmfile", Command::kRmFile},
      {"list", Command::kList},       {"ps", Command::kList},
      {"inspect", Command::kInspect}, {"sleep", Command::kSleep},
      {"wake", Command::kWake},       {"rm", Command::kRm},
      {"delete", Command::kRm},       {"set-timeouts", Command::kSetTimeouts},
  };
  auto it = kCommands.find(name);
  if (it == kCommands.end()) return std::nullopt;
  return it->second;
}

std::optional<Command> LookupTemplateCommand(std::string_view name) {
  if (name == "build" || name == "create") return Command::kTemplateBuild;
  if (name == "ls" || name == "list") return Command::kTemplateLs;
  if (name == "rm" || name == "delete") return Command::kTemplateRm;
  if (name == "inspect") return Command::kTemplateInspect;
  return std::nullopt;
}

// Checks the positionals of `o.command` and moves them into `o`.
absl::Status TakePositionals(Options& o, std::vector<std::string> pos) {
  const std::string name = CommandName(o.command);
  auto exactly = [&](size_t n, const std::string& what) -> absl::Status {
    if (pos.size() < n) return Usage(absl::StrCat(name, ": missing ", what));
    if (pos.size() > n) {
      return Usage(absl::StrCat(name, ": unexpected argument \"", pos[n], "\""));
    }
    return absl::OkStatus();
  };
  auto at_least_one = [&](const std::string& what) -> absl::Status {
    if (pos.empty()) return Usage(absl::StrCat(name, ": missing ", what));
    return absl::OkStatus();
  };
  switch (o.command) {
    case Command::kNone:
      return absl::OkStatus();
    case Command::kRun:
      if (o.argv.empty()) return Usage("run: missing the command to run (run [flags] -- CMD...)");
      return absl::OkStatus();
    case Command::kExec:
      if (pos.empty()) return Usage("exec: missing sandbox ID");
      o.ids = {pos[0]};
      if (o.argv.empty()) return Usage("exec: missing the command to run (exec ID [flags] -- CMD...)");
      return absl::OkStatus();
    case Command::kCreate:
    case Command::kList:
    case Command::kTemplateLs:
      return exactly(0, "");
    case Command::kCp:
      SBX_RETURN_IF_ERROR(exactly(2, "SRC and DST"));
      o.src = pos[0];
      o.dst = pos[1];
      return absl::OkStatus();
    case Command::kLs:
      if (pos.empty()) return Usage("ls: missing sandbox ID");
      if (pos.size() > 2) return Usage(absl::StrCat("ls: unexpected argument \"", pos[2], "\""));
      o.ids = {pos[0]};
      o.path = pos.size() == 2 ? pos[1] : "/";
      return absl::OkStatus();
    case Command::kStat:
    case Command::kCat:
    case Command::kRmFile:
      SBX_RETURN_IF_ERROR(exactly(2, pos.empty() ? "sandbox ID and PATH" : "PATH"));
      o.ids = {pos[0]};
      o.path = pos[1];
      return absl::OkStatus();
    case Command::kRm:
      SBX_RETURN_IF_ERROR(at_least_one("sandbox ID"));
      for (const std::string& id : pos) {
        // `rm` deletes whole sandboxes: something that looks like a path is
        // a mistake for `rmfile`, not a sandbox to delete.
        if (id.find_first_of("/:") != std::string::npos) {
          return Usage(absl::StrCat(
              "rm: \"", id, "\" is not a sandbox id; rm deletes sandboxes, "
              "`rmfile ID PATH` removes a file in one"));
        }
      }
      o.ids = std::move(pos);
      return absl::OkStatus();
    case Command::kInspect:
    case Command::kSleep:
    case Command::kWake:
      SBX_RETURN_IF_ERROR(at_least_one("sandbox ID"));
      o.ids = std::move(pos);
      return absl::OkStatus();
    case Command::kSetTimeouts:
      SBX_RETURN_IF_ERROR(exactly(1, "sandbox ID"));
      if (!o.idle_timeout && !o.ttl) {
        return Usage("set-timeouts: give --idle-timeout D, --ttl D or both");
      }
      o.ids = std::move(pos);
      return absl::OkStatus();
    case Command::kTemplateBuild:
      SBX_RETURN_IF_ERROR(exactly(1, "template NAME"));
      o.ids = std::move(pos);
      return absl::OkStatus();
    case Command::kTemplateRm:
    case Command::kTemplateInspect:
      SBX_RETURN_IF_ERROR(at_least_one("template NAME"));
      o.ids = std::move(pos);
      return absl::OkStatus();
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<absl::Duration> ParseDurationFlag(std::string_view text) {
  absl::Duration d;
  std::string s(text);
  uint64_t secs = 0;
  if (absl::SimpleAtoi(s, &secs)) {
    d = absl::Seconds(secs);
  } else if (!absl::ParseDuration(s, &d)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "bad duration \"", s, "\" (use e.g. 30s, 5m, 1h30m)"));
  }
  if (d < absl::ZeroDuration() || d == absl::InfiniteDuration()) {
    return absl::InvalidArgumentError(
        absl::StrCat("bad duration \"", s, "\" (must be positive)"));
  }
  return d;
}

absl::StatusOr<uint64_t> ParseMib(std::string_view text) {
  std::string s(text);
  uint64_t scale = 1;
  for (auto [suffix, mul] : {std::pair<const char*, uint64_t>{"GiB", 1024},
                             {"G", 1024}, {"MiB", 1}, {"M", 1}}) {
    if (absl::EndsWith(s, suffix)) {
      s.resize(s.size() - std::string_view(suffix).size());
      scale = mul;
      break;
    }
  }
  uint64_t v = 0;
  if (!absl::SimpleAtoi(s, &v) || v == 0 || v > (uint64_t{1} << 40) / scale) {
    return absl::InvalidArgumentError(absl::StrCat(
        "expected a size in MiB (e.g. 512, 512M, 2G), got \"", std::string(text), "\""));
  }
  return v * scale;
}

absl::StatusOr<Options> ParseArgs(const std::vector<std::string>& args,
                                  const GetEnv& getenv, Command* command) {
  Options o;
  if (const char* a = getenv("SBX_ADDR"); a != nullptr && *a != '\0') {
    o.addr = a;
    o.addr_explicit = true;
  }
  if (const char* t = getenv("SBX_TOKEN"); t != nullptr) o.token = t;
  if (const char* d = getenv("SBX_STATE_DIR"); d != nullptr) o.state_dir = d;
  if (command != nullptr) *command = Command::kNone;

  CommandSpec spec = SpecFor(Command::kNone);
  bool have_command = false;
  std::vector<std::string> pos;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a == "--") {
      if (spec.takes_argv) {
        o.argv.assign(args.begin() + i + 1, args.end());
      } else {
        pos.insert(pos.end(), args.begin() + i + 1, args.end());
      }
      break;
    }
    if (a.size() > 1 && a[0] == '-') {
      std::string name = a, value;
      bool inline_value = false;
      if (size_t eq = a.find('='); absl::StartsWith(a, "--") && eq != std::string::npos) {
        name = a.substr(0, eq);
        value = a.substr(eq + 1);
        inline_value = true;
      }
      const Flag* f = FindFlag(spec.flags, name);
      if (f == nullptr) {
        std::string where = have_command ? CommandName(o.command) + ": " : "";
        return Usage(absl::StrCat(where, "unknown flag ", name));
      }
      if (f->takes_value && !inline_value) {
        if (i + 1 >= args.size()) return Usage(absl::StrCat(name, ": missing value"));
        value = args[++i];
      } else if (!f->takes_value && inline_value) {
        return Usage(absl::StrCat(name, " takes no value"));
      }
      SBX_RETURN_IF_ERROR(f->handle(o, value));
      continue;
    }
    if (!have_command) {
      std::optional<Command> c;
      if (a == "help") {
        o.help = true;
        if (i + 1 < args.size()) c = LookupCommand(args[i + 1]);
        if (c) o.command = *c;
        if (command != nullptr) *command = o.command;
        return o;
      }
      if (a == "template") {
        if (i + 1 >= args.size() || args[i + 1] == "--help" || args[i + 1] == "-h") {
          if (i + 1 < args.size()) {
            o.help = true;
            o.command = Command::kTemplateLs;
            if (command != nullptr) *command = o.command;
            return o;
          }
          return Usage("template: missing subcommand (build, ls, rm, inspect)");
        }
        c = LookupTemplateCommand(args[++i]);
        if (!c) return Usage(absl::StrCat("template: unknown subcommand \"", args[i], "\""));
      } else {
        c = LookupCommand(a);
        if (!c) return Usage(absl::StrCat("unknown command \"", a, "\""));
      }
      o.command = *c;
      if (command != nullptr) *command = *c;
      spec = SpecFor(*c);
      have_command = true;
      continue;
    }
    if (spec.takes_argv && pos.size() == spec.fixed) {
      o.argv.assign(args.begin() + i, args.end());
      break;
    }
    pos.push_back(a);
  }
  if (o.help) return o;
  if (!have_command) return Usage("missing command");
  SBX_RETURN_IF_ERROR(TakePositionals(o, std::move(pos)));
  return o;
}

std::string Usage(Command command) {
  static constexpr char kGlobal[] =
      "Global flags (before or after the command):\n"
      "  --addr ADDR    sandboxd's address: unix:///path or tcp://HOST:PORT\n"
      "                 (env SBX_ADDR; default unix:///run/sbx/sandboxd.sock)\n"
      "  --token T      bearer token for tcp:// (env SBX_TOKEN)\n"
      "  --json         machine-readable output\n"
      "  -h, --help     this help\n";
  switch (command) {
    case Command::kNone:
      return absl::StrCat(
          "usage: sandboxctl [global flags] COMMAND [flags] [args]\n"
          "\n"
          "Sandboxes:\n"
          "  run [flags] -- CMD...      create a sandbox, run CMD in it, delete it\n"
          "  create [flags]             create a sandbox, print its id\n"
          "  exec ID [flags] -- CMD...  run CMD in a sandbox\n"
          "  list, ps [flags]           list sandboxes\n"
          "  inspect ID...              a sandbox as JSON\n"
          "  sleep ID...                snapshot a sandbox to disk, free its memory\n"
          "  wake ID...                 restore a sleeping sandbox\n"
          "  set-timeouts ID [--idle-timeout D] [--ttl D]\n"
          "                             change when it sleeps / is deleted\n"
          "  rm ID...                   delete sandboxes\n"
          "Files in a sandbox:\n"
          "  cp SRC DST                 copy ID:/path <-> host path (or - for stdio)\n"
          "  ls ID [PATH]               list a directory (like ls -l)\n"
          "  stat ID PATH               one file's metadata\n"
          "  cat ID PATH                a file to stdout\n"
          "  rmfile ID [-r] PATH        remove a file or directory\n"
          "Templates:\n"
          "  template build NAME [flags]  boot a kernel + rootfs, snapshot it\n"
          "  template ls                  list templates\n"
          "  template inspect NAME...     a template as JSON\n"
          "  template rm NAME...          delete templates\n"
          "\n",
          kGlobal,
          "\n`sandboxctl COMMAND --help` for a command's flags. Exit status: the\n"
          "command's for run/exec, 1 on errors, 2 on bad usage.\n");
    case Command::kRun:
      return absl::StrCat(
          "usage: sandboxctl run [flags] [--] CMD [ARG...]\n"
          "\n"
          "Creates a sandbox, runs CMD in it streaming stdout and stderr, then\n"
          "deletes the sandbox. stdin is forwarded unless it is a terminal.\n"
          "Exits with CMD's status: 128+N if killed by signal N, 124 on --timeout.\n"
          "Ctrl-C sends SIGINT to CMD; a second Ctrl-C stops waiting for it.\n"
          "With no sandboxd at the default address (and no --addr / SBX_ADDR),\n"
          "starts one for the duration of the command (state dir: SBX_STATE_DIR\n"
          "or sandboxd's default; the binary: SBX_SANDBOXD, else the sandboxd\n"
          "beside sandboxctl, else sandboxd on PATH).\n"
          "\n"
          "  -t, --template T   template (default: \"default\")\n"
          "  --cpus N           vCPUs (default: the template's)\n"
          "  --memory MIB       guest memory, e.g. 512 or 2G (default: the template's)\n"
          "  --disk MIB         writable disk size (default: the template's)\n"
          "  --timeout D        kill CMD after D (e.g. 30s, 5m, 1h30m)\n"
          "  -e, --env K=V      environment variable (repeatable)\n"
          "  -w, --workdir DIR  working directory (default /root)\n"
          "  --keep             keep the sandbox; print its id on stderr\n"
          "\n",
          kGlobal);
    case Command::kCreate:
      return absl::StrCat(
          "usage: sandboxctl create [flags]\n"
          "\n"
          "Creates a sandbox and prints its id (--json: the sandbox).\n"
          "\n"
          "  -t, --template T       template (default: \"default\")\n"
          "  --cpus N               vCPUs\n"
          "  --memory MIB           guest memory, e.g. 512 or 2G\n"
          "  --disk MIB             writable disk size\n"
          "  --idle-timeout D       sleep after D without requests (0: never)\n"
          "  --ttl D                delete after D\n"
          "  -l, --label K=V        label (repeatable)\n"
          "  -e, --env K=V          environment for every exec (repeatable)\n"
          "  --idempotency-key K    a retry with the same key returns the same sandbox\n"
          "\n",
          kGlobal);
    case Command::kExec:
      return absl::StrCat(
          "usage: sandboxctl exec ID [flags] [--] CMD [ARG...]\n"
          "\n"
          "Runs CMD in sandbox ID, streaming its output; exits with its status\n"
          "(128+N if killed by signal N, 124 on --timeout). stdin is forwarded\n"
          "unless it is a terminal. Ctrl-C sends SIGINT; a second one stops waiting.\n"
          "\n"
          "  --timeout D        kill CMD after D (e.g. 30s, 5m)\n"
          "  -e, --env K=V      environment variable (repeatable)\n"
          "  -w, --workdir DIR  working directory (default /root)\n"
          "  -d, --background   start CMD and return at once (prints its process id)\n"
          "\n",
          kGlobal);
    case Command::kCp:
      return absl::StrCat(
          "usage: sandboxctl cp SRC DST\n"
          "\n"
          "Copies one file between the host and a sandbox. One side is\n"
          "ID:/guest/path, the other a host path or - (stdin / stdout). A host path\n"
          "containing ':' before any '/' must be written ./like:this. A DST that is\n"
          "a directory gets SRC's base name. Streamed in 256 KiB chunks.\n"
          "\n",
          kGlobal);
    case Command::kLs:
      return absl::StrCat(
          "usage: sandboxctl ls ID [PATH]\n\n"
          "Lists a directory in sandbox ID (default /): mode, size, modification\n"
          "time, name.\n\n",
          kGlobal);
    case Command::kStat:
      return absl::StrCat("usage: sandboxctl stat ID PATH\n\nOne file's metadata.\n\n", kGlobal);
    case Command::kCat:
      return absl::StrCat("usage: sandboxctl cat ID PATH\n\nWrites a file of sandbox ID to stdout.\n\n", kGlobal);
    case Command::kRmFile:
      return absl::StrCat(
          "usage: sandboxctl rmfile ID [-r] PATH\n\n"
          "Removes a file (or, with -r, a directory tree) in sandbox ID.\n\n"
          "  -r, --recursive    remove directories and their contents\n\n",
          kGlobal);
    case Command::kList:
      return absl::StrCat(
          "usage: sandboxctl list [flags]     (alias: ps)\n\n"
          "Lists sandboxes: ID, TEMPLATE, STATE, CPUS, MEMORY, AGE, LABELS.\n\n"
          "  -l, --label K=V    only sandboxes with this label (repeatable)\n"
          "  --state S[,S]      only these states: creating, running, sleeping,\n"
          "                     waking, pausing, deleting, failed\n\n",
          kGlobal);
    case Command::kInspect:
      return absl::StrCat("usage: sandboxctl inspect ID...\n\nPrints sandboxes as JSON.\n\n", kGlobal);
    case Command::kSleep:
      return absl::StrCat(
          "usage: sandboxctl sleep ID...\n\n"
          "Snapshots each sandbox to disk and ends its VM; memory, processes\n"
          "and files survive. Any later request wakes it.\n\n",
          kGlobal);
    case Command::kWake:
      return absl::StrCat("usage: sandboxctl wake ID...\n\nRestores sleeping sandboxes.\n\n", kGlobal);
    case Command::kSetTimeouts:
      return absl::StrCat(
          "usage: sandboxctl set-timeouts ID [--idle-timeout D] [--ttl D]\n\n"
          "Changes when a sandbox sleeps by itself (idle timeout; 0: never) and\n"
          "when it is deleted (ttl, counted from now; 0: never).\n\n",
          kGlobal);
    case Command::kRm:
      return absl::StrCat(
          "usage: sandboxctl rm ID...     (alias: delete)\n\n"
          "Deletes sandboxes and everything they hold. (To remove a file in a\n"
          "sandbox: rmfile ID PATH.)\n\n",
          kGlobal);
    case Command::kTemplateBuild:
      return absl::StrCat(
          "usage: sandboxctl template build NAME [flags]\n\n"
          "Boots a kernel with a rootfs once and snapshots it as template NAME;\n"
          "shows progress on stderr, then the template.\n\n"
          "  --kernel PATH      kernel on the daemon's host (default: the daemon's)\n"
          "  --rootfs PATH      rootfs image on the daemon's host (default: the daemon's)\n"
          "  --cpus N           vCPUs (default 1)\n"
          "  --memory MIB       guest memory (default 512)\n"
          "  --disk MIB         each sandbox's writable disk (default 1024)\n\n",
          kGlobal);
    case Command::kTemplateLs:
    case Command::kTemplateRm:
    case Command::kTemplateInspect:
      return absl::StrCat(
          "usage: sandboxctl template build NAME [flags]   (see template build --help)\n"
          "       sandboxctl template ls\n"
          "       sandboxctl template inspect NAME...\n"
          "       sandboxctl template rm NAME...\n\n"
          "Templates are booted-once snapshots that sandboxes are restored from.\n"
          "rm is refused while a sandbox uses the template.\n\n",
          kGlobal);
  }
  return "";
}

}  // namespace sbx::ctl
