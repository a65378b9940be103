#include "sandboxd/ctl/commands.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <optional>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "base/unique_fd.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "sandboxd/ctl/format.h"

namespace sbx::ctl {
namespace {

using sbx::v1::ExecEvent;
using sbx::v1::ExecInput;
using sbx::v1::ExecRequest;

constexpr size_t kChunkSize = 256 * 1024;
// Transfers smaller than this finish before a progress line helps.
constexpr uint64_t kProgressMinBytes = 8 << 20;

void SetDuration(absl::Duration d, google::protobuf::Duration* out) {
  int64_t secs = absl::IDivDuration(d, absl::Seconds(1), &d);
  out->set_seconds(secs);
  out->set_nanos(static_cast<int32_t>(absl::ToInt64Nanoseconds(d)));
}

void Authorize(const Api& api, grpc::ClientContext& ctx) {
  if (!api.token.empty()) {
    ctx.AddMetadata("authorization", absl::StrCat("Bearer ", api.token));
  }
}

// The message for a failed call, with "no daemon there" told apart from
// what a daemon answered.
std::string Describe(const Api& api, const grpc::Status& status) {
  if (status.error_code() == grpc::StatusCode::UNAVAILABLE &&
      api.channel != nullptr &&
      api.channel->GetState(false) != GRPC_CHANNEL_READY) {
    if (api.addr_is_default) {
      return absl::StrCat("no sandboxd at ", api.addr,
                          ": start it with `sandboxd`, or use `sandboxctl "
                          "run`, which starts one");
    }
    return absl::StrCat("no sandboxd at ", api.addr, ": ",
                        status.error_message());
  }
  if (status.error_code() == grpc::StatusCode::CANCELLED) return "interrupted";
  if (status.error_message().empty()) {
    return absl::StrCat("gRPC status ", static_cast<int>(status.error_code()));
  }
  return status.error_message();
}

void PrintError(Io& io, std::string_view what, std::string_view message) {
  *io.err << "sandboxctl: " << what << ": " << message << "\n";
  io.err->flush();
}

int Fail(const Api& api, Io& io, std::string_view what,
         const grpc::Status& status) {
  PrintError(io, what, Describe(api, status));
  return kExitError;
}

// A pipe whose write end wakes threads blocked in poll() to end them.
struct StopPipe {
  UniqueFd rd, wr;
  static StopPipe Make() {
    int fds[2];
    StopPipe p;
    if (pipe2(fds, O_CLOEXEC | O_NONBLOCK) == 0) {
      p.rd.reset(fds[0]);
      p.wr.reset(fds[1]);
    }
    return p;
  }
  void Stop() {
    if (wr.valid()) {
      [[maybe_unused]] ssize_t n = write(wr.get(), "x", 1);
    }
  }
};

// Waits until `fd` is readable (true) or `stop` is (false).
bool WaitReadable(int fd, int stop) {
  pollfd p[2] = {{fd, POLLIN, 0}, {stop, POLLIN, 0}};
  while (true) {
    int n = poll(p, stop >= 0 ? 2 : 1, -1);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return false;
    if (p[1].revents != 0 && stop >= 0) return false;
    if (p[0].revents != 0) return true;
  }
}

// Reads the bytes waiting on the interrupt pipe: how many Ctrl-Cs.
int ReadInterrupts(int fd) {
  char buf[16];
  ssize_t n;
  do {
    n = read(fd, buf, sizeof buf);
  } while (n < 0 && errno == EINTR);
  return n > 0 ? static_cast<int>(n) : 0;
}

// Cancels `ctx` on the first Ctrl-C while it lives.
class CancelOnInterrupt {
 public:
  CancelOnInterrupt(int interrupt_fd, grpc::ClientContext* ctx)
      : stop_(StopPipe::Make()) {
    if (interrupt_fd < 0) return;
    thread_ = std::thread([this, interrupt_fd, ctx] {
      if (WaitReadable(interrupt_fd, stop_.rd.get()) &&
          ReadInterrupts(interrupt_fd) > 0) {
        interrupted_ = true;
        ctx->TryCancel();
      }
    });
  }
  ~CancelOnInterrupt() {
    stop_.Stop();
    if (thread_.joinable()) thread_.join();
  }
  bool interrupted() const { return interrupted_; }

 private:
  StopPipe stop_;
  std::atomic<bool> interrupted_{false};
  std::thread thread_;
};

// ---- exec ----

struct ExecOutcome {
  grpc::Status status;
  std::optional<sbx::v1::Exited> exited;
  bool cancelled = false;  // a second Ctrl-C stopped waiting
};

int ExitCode(const sbx::v1::Exited& e) {
  if (e.timed_out()) return kExitTimeout;
  if (e.signal() != 0) return 128 + e.signal();
  return e.exit_code();
}

// Runs `req` through ExecInteractive: stdin forwarded from io.in_fd (unless
// none or a terminal: then closed at once), stdout/stderr written to ours as
// they arrive, Ctrl-C forwarded.
ExecOutcome StreamExec(const Api& api, Io& io, const ExecRequest& req) {
  ExecOutcome result;
  grpc::ClientContext ctx;
  Authorize(api, ctx);
  std::unique_ptr<grpc::ClientReaderWriterInterface<ExecInput, ExecEvent>>
      stream = api.sandboxes->ExecInteractive(&ctx);

  // Writes come from the stdin and the interrupt threads; gRPC allows one
  // Write at a time.
  absl::Mutex write_mu;
  bool half_closed = false;  // guarded by write_mu
  auto write = [&](const ExecInput& in) {
    absl::MutexLock lock(&write_mu);
    return !half_closed && stream->Write(in);
  };
  ExecInput start;
  *start.mutable_start() = req;
  StopPipe stop = StopPipe::Make();
  std::thread stdin_thread, interrupt_thread;
  std::atomic<bool> cancelled{false};

  if (write(start)) {
    const bool forward = io.in_fd >= 0 && !io.in_is_tty;
    if (!forward) {
      ExecInput close;
      close.set_close_stdin(true);
      write(close);
    } else {
      stdin_thread = std::thread([&] {
        std::string buf(kChunkSize, '\0');
        while (WaitReadable(io.in_fd, stop.rd.get())) {
          ssize_t n = read(io.in_fd, buf.data(), buf.size());
          if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
          if (n <= 0) break;  // EOF, or stdin unreadable: close it
          ExecInput in;
          in.set_stdin(buf.data(), static_cast<size_t>(n));
          if (!write(in)) return;
        }
        ExecInput close;
        close.set_close_stdin(true);
        write(close);
      });
    }
    if (io.interrupt_fd >= 0) {
      interrupt_thread = std::thread([&] {
        int seen = 0;
        while (WaitReadable(io.interrupt_fd, stop.rd.get())) {
          seen += ReadInterrupts(io.interrupt_fd);
          if (seen >= 2) {
            cancelled = true;
            ctx.TryCancel();
            return;
          }
          if (seen == 1) {
            ExecInput sig;
            sig.set_signal(2);  // SIGINT
            write(sig);
          }
        }
      });
    }
  }

  ExecEvent ev;
  while (stream->Read(&ev)) {
    switch (ev.event_case()) {
      case ExecEvent::kStdout:
        io.out->write(ev.stdout().data(), static_cast<std::streamsize>(ev.stdout().size()));
        io.out->flush();
        break;
      case ExecEvent::kStderr:
        io.err->write(ev.stderr().data(), static_cast<std::streamsize>(ev.stderr().size()));
        io.err->flush();
        break;
      case ExecEvent::kExited: {
        result.exited = ev.exited();
        // Done: no more stdin or signals, and close our side, which the
        // daemon waits for before it ends the call.
        stop.Stop();
        absl::MutexLock lock(&write_mu);
        if (!half_closed) stream->WritesDone();
        half_closed = true;
        break;
      }
      default:
        break;
    }
  }
  stop.Stop();
  if (interrupt_thread.joinable()) interrupt_thread.join();
  if (stdin_thread.joinable()) stdin_thread.join();
  result.status = stream->Finish();
  result.cancelled = cancelled;
  return result;
}

ExecRequest MakeExecRequest(const Options& o, const std::string& id) {
  ExecRequest req;
  req.set_sandbox_id(id);
  for (const std::string& a : o.argv) req.add_argv(a);
  req.mutable_env()->insert(o.env.begin(), o.env.end());
  req.set_cwd(o.cwd);
  if (o.timeout) SetDuration(*o.timeout, req.mutable_timeout());
  return req;
}

// The exit status for an exec's outcome; prints the error if there is one.
int FinishExec(const Api& api, Io& io, std::string_view what,
               const ExecOutcome& r) {
  if (r.cancelled) {
    PrintError(io, what, "interrupted");
    return kExitInterrupted;
  }
  if (r.exited) return ExitCode(*r.exited);
  if (r.status.ok()) {
    PrintError(io, what, "the command's exit status never came");
    return kExitError;
  }
  return Fail(api, io, what, r.status);
}

int Exec(const Options& o, const Api& api, Io& io) {
  const std::string& id = o.ids[0];
  const std::string what = absl::StrCat("exec ", id);
  ExecRequest req = MakeExecRequest(o, id);
  if (o.background) {
    req.set_background(true);
    grpc::ClientContext ctx;
    Authorize(api, ctx);
    auto reader = api.sandboxes->Exec(&ctx, req);
    ExecEvent ev;
    std::optional<sbx::v1::Started> started;
    while (reader->Read(&ev)) {
      if (ev.has_started()) started = ev.started();
    }
    grpc::Status st = reader->Finish();
    if (!st.ok()) return Fail(api, io, what, st);
    if (!started) {
      PrintError(io, what, "the daemon did not say the command started");
      return kExitError;
    }
    if (o.json) {
      *io.out << ToJson(*started);
    } else {
      *io.out << started->process_id() << "\n";
    }
    return 0;
  }
  return FinishExec(api, io, what, StreamExec(api, io, req));
}

// The default template is built on first use; rather than a Create that
// silently takes minutes, build it here with its progress on stderr.
// Errors are left to the Create that follows.
void EnsureDefaultTemplate(const Options& o, const Api& api, Io& io) {
  if (!o.template_name.empty() && o.template_name != "default") return;
  {
    grpc::ClientContext ctx;
    Authorize(api, ctx);
    sbx::v1::GetTemplateRequest req;
    req.set_name("default");
    sbx::v1::Template t;
    grpc::Status st = api.templates->Get(&ctx, req, &t);
    if (st.error_code() != grpc::StatusCode::NOT_FOUND) return;
  }
  *io.err << "sandboxctl: building the default template (first use: the guest boots once)\n";
  io.err->flush();
  grpc::ClientContext ctx;
  Authorize(api, ctx);
  CancelOnInterrupt cancel(io.interrupt_fd, &ctx);
  sbx::v1::CreateTemplateRequest req;
  req.set_name("default");
  auto reader = api.templates->Create(&ctx, req);
  sbx::v1::TemplateProgress p;
  while (reader->Read(&p)) {
    if (!p.step().empty()) {
      *io.err << absl::StrFormat("[%.1fs] %s\n", p.elapsed_seconds(), p.step());
      io.err->flush();
    }
  }
  (void)reader->Finish();
}

int Run(const Options& o, const Api& api, Io& io) {
  EnsureDefaultTemplate(o, api, io);
  sbx::v1::CreateSandboxRequest creq;
  creq.set_template_(o.template_name);
  creq.set_vcpus(o.cpus);
  creq.set_memory_mib(o.memory_mib);
  creq.set_disk_mib(o.disk_mib);
  sbx::v1::Sandbox sb;
  {
    grpc::ClientContext ctx;
    Authorize(api, ctx);
    CancelOnInterrupt cancel(io.interrupt_fd, &ctx);
    grpc::Status st = api.sandboxes->Create(&ctx, creq, &sb);
    if (!st.ok()) {
      int code = Fail(api, io, "run: create sandbox", st);
      return cancel.interrupted() ? kExitInterrupted : code;
    }
  }
  int code = FinishExec(api, io, "run", StreamExec(api, io, MakeExecRequest(o, sb.id())));
  if (o.keep) {
    *io.err << sb.id() << "\n";
    io.err->flush();
    return code;
  }
  grpc::ClientContext ctx;
  Authorize(api, ctx);
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::minutes(1));
  sbx::v1::DeleteSandboxRequest dreq;
  dreq.set_id(sb.id());
  sbx::v1::DeleteSandboxResponse dresp;
  grpc::Status st = api.sandboxes->Delete(&ctx, dreq, &dresp);
  if (!st.ok()) {
    Fail(api, io, absl::StrCat("run: delete sandbox ", sb.id()), st);
    if (code == 0) code = kExitError;
  }
  return code;
}

// ---- sandboxes ----

int Create(const Options& o, const Api& api, Io& io) {
  EnsureDefaultTemplate(o, api, io);
  sbx::v1::CreateSandboxRequest req;
  req.set_template_(o.template_name);
  req.set_vcpus(o.cpus);
  req.set_memory_mib(o.memory_mib);
  req.set_disk_mib(o.disk_mib);
  req.mutable_env()->insert(o.env.begin(), o.env.end());
  req.mutable_labels()->insert(o.labels.begin(), o.labels.end());
  if (o.idle_timeout) SetDuration(*o.idle_timeout, req.mutable_idle_timeout());
  if (o.ttl) SetDuration(*o.ttl, req.mutable_ttl());
  req.set_idempotency_key(o.idempotency_key);
  grpc::ClientContext ctx;
  Authorize(api, ctx);
  sbx::v1::Sandbox sb;
  grpc::Status st = api.sandboxes->Create(&ctx, req, &sb);
  if (!st.ok()) return Fail(api, io, "create", st);
  *io.out << (o.json ? ToJson(sb) : sb.id() + "\n");
  return 0;
}

int List(const Options& o, const Api& api, Io& io) {
  sbx::v1::ListSandboxesRequest req;
  req.mutable_labels()->insert(o.labels.begin(), o.labels.end());
  for (sbx::v1::SandboxState s : o.states) req.add_states(s);
  sbx::v1::ListSandboxesResponse all;
  while (true) {
    grpc::ClientContext ctx;
    Authorize(api, ctx);
    sbx::v1::ListSandboxesResponse page;
    grpc::Status st = api.sandboxes->List(&ctx, req, &page);
    if (!st.ok()) return Fail(api, io, "list", st);
    for (sbx::v1::Sandbox& sb : *page.mutable_sandboxes()) {
      *all.add_sandboxes() = std::move(sb);
    }
    if (page.next_page_token().empty()) break;
    if (page.next_page_token() == req.page_token()) {
      PrintError(io, "list", "the daemon returned the same page token twice");
      return kExitError;
    }
    req.set_page_token(page.next_page_token());
  }
  if (o.json) {
    *io.out << ToJson(all);
    return 0;
  }
  std::vector<std::vector<std::string>> rows = {
      {"ID", "TEMPLATE", "STATE", "CPUS", "MEMORY", "AGE", "LABELS"}};
  absl::Time now = io.now();
  for (const sbx::v1::Sandbox& sb : all.sandboxes()) {
    rows.push_back({sb.id(), sb.template_(), StateName(sb.state()),
                    absl::StrCat(sb.vcpus()), FormatMib(sb.memory_mib()),
                    sb.has_created_at() ? FormatAge(now - FromProto(sb.created_at())) : "-",
                    FormatLabels(sb.labels())});
  }
  *io.out << FormatTable(rows, {3, 4});
  return 0;
}

// Calls `rpc` for each id; prints each result with `print`. Goes on past
// failures; exit 1 if any failed.
template <typename Req, typename Resp>
int ForEachId(const Options& o, const Api& api, Io& io, const std::string& verb,
              const std::function<grpc::Status(grpc::ClientContext*, const Req&, Resp*)>& rpc,
              const std::function<void(Req&, const std::string&)>& set_id,
              const std::function<void(const std::string&, const Resp&)>& print) {
  int code = 0;
  for (const std::string& id : o.ids) {
    grpc::ClientContext ctx;
    Authorize(api, ctx);
    Req req;
    set_id(req, id);
    Resp resp;
    grpc::Status st = rpc(&ctx, req, &resp);
    if (!st.ok()) {
      code = Fail(api, io, absl::StrCat(verb, " ", id), st);
      continue;
    }
    print(id, resp);
  }
  return code;
}

int SandboxVerb(const Options& o, const Api& api, Io& io) {
  auto* s = api.sandboxes;
  auto print_sandbox = [&](const std::string& id, const sbx::v1::Sandbox& sb) {
    *io.out << (o.json ? ToJson(sb) : id + "\n");
  };
  auto print_id = [&](const std::string& id, const auto&) {
    *io.out << id << "\n";
  };
  switch (o.command) {
    case Command::kInspect:
      return ForEachId<sbx::v1::GetSandboxRequest, sbx::v1::Sandbox>(
          o, api, io, "inspect",
          [s](grpc::ClientContext* c, const auto& r, auto* p) { return s->Get(c, r, p); },
          [](auto& r, const std::string& id) { r.set_id(id); },
          [&](const std::string&, const sbx::v1::Sandbox& sb) { *io.out << ToJson(sb); });
    case Command::kSleep:
      return ForEachId<sbx::v1::SleepRequest, sbx::v1::Sandbox>(
          o, api, io, "sleep",
          [s](grpc::ClientContext* c, const auto& r, auto* p) { return s->Sleep(c, r, p); },
          [](auto& r, const std::string& id) { r.set_id(id); }, print_sandbox);
    case Command::kWake:
      return ForEachId<sbx::v1::WakeRequest, sbx::v1::Sandbox>(
          o, api, io, "wake",
          [s](grpc::ClientContext* c, const auto& r, auto* p) { return s->Wake(c, r, p); },
          [](auto& r, const std::string& id) { r.set_id(id); }, print_sandbox);
    case Command::kRm:
      return ForEachId<sbx::v1::DeleteSandboxRequest, sbx::v1::DeleteSandboxResponse>(
          o, api, io, "rm",
          [s](grpc::ClientContext* c, const auto& r, auto* p) { return s->Delete(c, r, p); },
          [](auto& r, const std::string& id) { r.set_id(id); }, print_id);
    default:
      return kExitError;
  }
}

// ---- files ----

// "ID:/path" -> {ID, /path}. A sandbox id has neither ':' nor '/', so a
// host path with a ':' before any '/' must be written ./like:this.
bool SplitGuestPath(const std::string& spec, std::string* id, std::string* path) {
  size_t colon = spec.find(':');
  if (colon == std::string::npos || colon == 0) return false;
  if (spec.find('/') < colon) return false;
  *id = spec.substr(0, colon);
  *path = spec.substr(colon + 1);
  return true;
}

std::string BaseName(const std::string& path) {
  std::string p = path;
  while (p.size() > 1 && p.back() == '/') p.pop_back();
  size_t slash = p.rfind('/');
  return slash == std::string::npos ? p : p.substr(slash + 1);
}

// A "\rNAME: 12.0 MiB / 100.0 MiB  12%" line on a terminal's stderr for
// transfers large enough to wait for.
class Progress {
 public:
  Progress(Io& io, std::string name, uint64_t total)
      : io_(io), name_(std::move(name)), total_(total) {}
  void Add(uint64_t n) {
    done_ += n;
    if (!io_.err_is_tty || std::max(total_, done_) < kProgressMinBytes) return;
    absl::Time now = absl::Now();
    if (now - last_ < absl::Milliseconds(100)) return;
    last_ = now;
    Print();
  }
  void Finish() {
    if (!shown_) return;
    Print();
    *io_.err << "\n";
    io_.err->flush();
  }

 private:
  void Print() {
    shown_ = true;
    *io_.err << "\r" << name_ << ": " << FormatBytes(done_);
    if (total_ > 0) {
      *io_.err << " / " << FormatBytes(total_) << "  "
               << std::min<uint64_t>(100, done_ * 100 / total_) << "%";
    }
    *io_.err << "\x1b[K";  // clear the rest of the line
    io_.err->flush();
  }
  Io& io_;
  std::string name_;
  uint64_t total_;
  uint64_t done_ = 0;
  bool shown_ = false;
  absl::Time last_ = absl::InfinitePast();
};

bool WriteAll(int fd, const char* data, size_t size) {
  while (size > 0) {
    ssize_t n = write(fd, data, size);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    data += n;
    size -= static_cast<size_t>(n);
  }
  return true;
}

int Upload(const Api& api, Io& io, const std::string& src, const std::string& id,
           std::string path) {
  const std::string what = absl::StrCat("cp ", src, " ", id, ":", path);
  UniqueFd owned;
  int fd = io.in_fd;
  uint32_t mode = 0;
  uint64_t size = 0;
  if (src != "-") {
    owned.reset(open(src.c_str(), O_RDONLY | O_CLOEXEC));
    if (!owned.valid()) {
      PrintError(io, what, absl::StrCat("open ", src, ": ", strerror(errno)));
      return kExitError;
    }
    struct stat st;
    if (fstat(owned.get(), &st) != 0 || S_ISDIR(st.st_mode)) {
      PrintError(io, what, absl::StrCat(src, " is a directory (cp copies one file)"));
      return kExitError;
    }
    fd = owned.get();
    mode = st.st_mode & 07777;
    if (S_ISREG(st.st_mode)) size = static_cast<uint64_t>(st.st_size);
  } else if (fd < 0) {
    PrintError(io, what, "no stdin");
    return kExitError;
  }
  // Into a directory: keep the source's name, as cp does.
  bool into_dir = absl::EndsWith(path, "/");
  if (!into_dir) {
    grpc::ClientContext ctx;
    Authorize(api, ctx);
    sbx::v1::StatRequest req;
    req.set_sandbox_id(id);
    req.set_path(path);
    sbx::v1::FileInfo info;
    // Any error (typically: no such file) shows again in WriteFile.
    into_dir = api.sandboxes->Stat(&ctx, req, &info).ok() &&
               info.type() == sbx::v1::DIRECTORY;
  }
  if (into_dir) {
    if (src == "-") {
      PrintError(io, what, "the destination is a directory; name the file to write");
      return kExitError;
    }
    if (!absl::EndsWith(path, "/")) path += '/';
    path += BaseName(src);
  }

  grpc::ClientContext ctx;
  Authorize(api, ctx);
  CancelOnInterrupt cancel(io.interrupt_fd, &ctx);
  sbx::v1::WriteFileResponse resp;
  auto writer = api.sandboxes->WriteFile(&ctx, &resp);
  sbx::v1::WriteFileRequest header;
  header.mutable_header()->set_sandbox_id(id);
  header.mutable_header()->set_path(path);
  header.mutable_header()->set_mode(mode);
  Progress progress(io, BaseName(path), size);
  std::string read_error;
  if (writer->Write(header)) {
    std::string buf(kChunkSize, '\0');
    sbx::v1::WriteFileRequest chunk;
    while (true) {
      // Fill whole chunks (a pipe hands out a little at a time).
      size_t have = 0;
      while (have < buf.size()) {
        ssize_t n = read(fd, buf.data() + have, buf.size() - have);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) read_error = absl::StrCat("read ", src, ": ", strerror(errno));
        if (n <= 0) break;
        have += static_cast<size_t>(n);
      }
      if (!read_error.empty()) {
        // End the call without half-closing: the old file stays as it was.
        ctx.TryCancel();
        break;
      }
      if (have == 0) break;
      chunk.set_data(buf.data(), have);
      if (!writer->Write(chunk)) break;
      progress.Add(have);
      if (have < buf.size()) break;  // EOF came inside this chunk
    }
    if (read_error.empty()) writer->WritesDone();
  }
  grpc::Status st = writer->Finish();
  progress.Finish();
  if (!read_error.empty()) {
    PrintError(io, what, read_error);
    return kExitError;
  }
  if (!st.ok()) return Fail(api, io, what, st);
  return 0;
}

int Download(const Api& api, Io& io, const std::string& id,
             const std::string& path, std::string dst) {
  const std::string what = absl::StrCat("cp ", id, ":", path, " ", dst);
  bool to_stdout = dst == "-";
  if (!to_stdout) {
    struct stat st;
    if (absl::EndsWith(dst, "/") || (stat(dst.c_str(), &st) == 0 && S_ISDIR(st.st_mode))) {
      if (!absl::EndsWith(dst, "/")) dst += '/';
      dst += BaseName(path);
    }
  }
  // Into a temporary file beside dst, renamed once complete: a failed copy
  // leaves dst as it was.
  std::string tmp;
  UniqueFd out;
  if (!to_stdout) {
    tmp = dst + ".sandboxctl-XXXXXX";
    out.reset(mkostemp(tmp.data(), O_CLOEXEC));
    if (!out.valid()) {
      PrintError(io, what, absl::StrCat("create ", tmp, ": ", strerror(errno)));
      return kExitError;
    }
  }
  auto cleanup = [&] {
    if (!tmp.empty()) unlink(tmp.c_str());
  };

  grpc::ClientContext ctx;
  Authorize(api, ctx);
  CancelOnInterrupt cancel(io.interrupt_fd, &ctx);
  sbx::v1::ReadFileRequest req;
  req.set_sandbox_id(id);
  req.set_path(path);
  auto reader = api.sandboxes->ReadFile(&ctx, req);
  sbx::v1::FileChunk chunk;
  std::optional<Progress> progress;
  uint32_t mode = 0644;
  std::string write_error;
  while (reader->Read(&chunk)) {
    if (!progress) {
      progress.emplace(io, BaseName(path), chunk.info().size());
      if (chunk.info().mode() != 0) mode = chunk.info().mode() & 07777;
    }
    const std::string& d = chunk.data();
    if (to_stdout) {
      io.out->write(d.data(), static_cast<std::streamsize>(d.size()));
      if (!*io.out) write_error = "write to stdout failed";
    } else if (!WriteAll(out.get(), d.data(), d.size())) {
      write_error = absl::StrCat("write ", tmp, ": ", strerror(errno));
    }
    if (!write_error.empty()) {
      ctx.TryCancel();
      break;
    }
    progress->Add(d.size());
  }
  grpc::Status st = reader->Finish();
  if (progress) progress->Finish();
  if (!write_error.empty()) {
    cleanup();
    PrintError(io, what, write_error);
    return kExitError;
  }
  if (!st.ok()) {
    cleanup();
    return Fail(api, io, what, st);
  }
  if (to_stdout) {
    io.out->flush();
    return 0;
  }
  if (fchmod(out.get(), mode) != 0 || close(out.release()) != 0 ||
      rename(tmp.c_str(), dst.c_str()) != 0) {
    std::string err = strerror(errno);
    cleanup();
    PrintError(io, what, absl::StrCat("write ", dst, ": ", err));
    return kExitError;
  }
  return 0;
}

int Cp(const Options& o, const Api& api, Io& io) {
  std::string src_id, src_path, dst_id, dst_path;
  bool src_guest = SplitGuestPath(o.src, &src_id, &src_path);
  bool dst_guest = SplitGuestPath(o.dst, &dst_id, &dst_path);
  if (src_guest == dst_guest) {
    PrintError(io, "cp", src_guest
        ? "both sides are in sandboxes; one side must be a host path"
        : "neither side is in a sandbox; write one as ID:/path");
    return kExitUsage;
  }
  if ((src_guest && src_path.empty()) || (dst_guest && dst_path.empty())) {
    PrintError(io, "cp", "empty path after ID:");
    return kExitUsage;
  }
  return src_guest ? Download(api, io, src_id, src_path, o.dst)
                   : Upload(api, io, o.src, dst_id, dst_path);
}

int Cat(const Options& o, const Api& api, Io& io) {
  return Download(api, io, o.ids[0], o.path, "-");
}

std::string TypeName(sbx::v1::FileType t) {
  switch (t) {
    case sbx::v1::REGULAR: return "file";
    case sbx::v1::DIRECTORY: return "directory";
    case sbx::v1::SYMLINK: return "symlink";
    default: return "other";
  }
}

std::vector<std::string> LsRow(const sbx::v1::FileInfo& f, const Io& io) {
  std::string name = f.name();
  if (f.type() == sbx::v1::SYMLINK && !f.symlink_target().empty()) {
    name += " -> " + f.symlink_target();
  }
  return {FormatMode(f.type(), f.mode()), absl::StrCat(f.size()),
          FormatTime(f.modified_at(), io.tz), name};
}

int Ls(const Options& o, const Api& api, Io& io) {
  const std::string& id = o.ids[0];
  grpc::ClientContext ctx;
  Authorize(api, ctx);
  sbx::v1::ListDirRequest req;
  req.set_sandbox_id(id);
  req.set_path(o.path);
  sbx::v1::ListDirResponse resp;
  grpc::Status st = api.sandboxes->ListDir(&ctx, req, &resp);
  if (!st.ok()) return Fail(api, io, absl::StrCat("ls ", id, ":", o.path), st);
  if (o.json) {
    *io.out << ToJson(resp);
    return 0;
  }
  std::vector<std::vector<std::string>> rows;
  for (const sbx::v1::FileInfo& f : resp.entries()) rows.push_back(LsRow(f, io));
  *io.out << FormatTable(rows, {1});
  return 0;
}

int Stat(const Options& o, const Api& api, Io& io) {
  const std::string& id = o.ids[0];
  grpc::ClientContext ctx;
  Authorize(api, ctx);
  sbx::v1::StatRequest req;
  req.set_sandbox_id(id);
  req.set_path(o.path);
  sbx::v1::FileInfo f;
  grpc::Status st = api.sandboxes->Stat(&ctx, req, &f);
  if (!st.ok()) return Fail(api, io, absl::StrCat("stat ", id, ":", o.path), st);
  if (o.json) {
    *io.out << ToJson(f);
    return 0;
  }
  std::vector<std::vector<std::string>> rows = {
      {"path:", o.path},
      {"type:", TypeName(f.type())},
      {"size:", absl::StrCat(f.size())},
      {"mode:", absl::StrFormat("%s (%04o)", FormatMode(f.type(), f.mode()), f.mode())},
      {"modified:", FormatTime(f.modified_at(), io.tz)},
  };
  if (f.type() == sbx::v1::SYMLINK) rows.push_back({"target:", f.symlink_target()});
  *io.out << FormatTable(rows);
  return 0;
}

int RmFile(const Options& o, const Api& api, Io& io) {
  const std::string& id = o.ids[0];
  grpc::ClientContext ctx;
  Authorize(api, ctx);
  sbx::v1::RemoveRequest req;
  req.set_sandbox_id(id);
  req.set_path(o.path);
  req.set_recursive(o.recursive);
  sbx::v1::RemoveResponse resp;
  grpc::Status st = api.sandboxes->Remove(&ctx, req, &resp);
  if (!st.ok()) return Fail(api, io, absl::StrCat("rmfile ", id, ":", o.path), st);
  return 0;
}

// ---- templates ----

std::vector<std::string> TemplateRow(const sbx::v1::Template& t, const Io& io) {
  return {t.name(), TemplateStateName(t.state()), absl::StrCat(t.vcpus()),
          FormatMib(t.memory_mib()), FormatMib(t.disk_mib()),
          absl::StrCat(t.sandboxes()),
          t.has_created_at() ? FormatAge(io.now() - FromProto(t.created_at())) : "-"};
}
const std::vector<std::string> kTemplateHeader = {
    "NAME", "STATE", "CPUS", "MEMORY", "DISK", "SANDBOXES", "AGE"};

int TemplateBuild(const Options& o, const Api& api, Io& io) {
  const std::string& name = o.ids[0];
  const std::string what = absl::StrCat("template build ", name);
  sbx::v1::CreateTemplateRequest req;
  req.set_name(name);
  req.set_kernel(o.kernel);
  req.set_rootfs(o.rootfs);
  req.set_vcpus(o.cpus);
  req.set_memory_mib(o.memory_mib);
  req.set_disk_mib(o.disk_mib);
  grpc::ClientContext ctx;
  Authorize(api, ctx);
  auto reader = api.templates->Create(&ctx, req);
  sbx::v1::TemplateProgress p;
  std::optional<sbx::v1::Template> result;
  while (reader->Read(&p)) {
    if (!p.step().empty()) {
      *io.err << absl::StrFormat("[%.1fs] %s\n", p.elapsed_seconds(), p.step());
      io.err->flush();
    }
    if (p.has_template_()) result = p.template_();
  }
  grpc::Status st = reader->Finish();
  if (!st.ok()) return Fail(api, io, what, st);
  if (!result) {
    PrintError(io, what, "the build ended without a template");
    return kExitError;
  }
  if (o.json) {
    *io.out << ToJson(*result);
  } else {
    *io.out << FormatTable({kTemplateHeader, TemplateRow(*result, io)});
  }
  if (result->state() != sbx::v1::READY) {
    PrintError(io, what, result->failure().empty()
                             ? absl::StrCat("template is ", TemplateStateName(result->state()))
                             : result->failure());
    return kExitError;
  }
  return 0;
}

int TemplateLs(const Options& o, const Api& api, Io& io) {
  grpc::ClientContext ctx;
  Authorize(api, ctx);
  sbx::v1::ListTemplatesResponse resp;
  grpc::Status st = api.templates->List(&ctx, sbx::v1::ListTemplatesRequest(), &resp);
  if (!st.ok()) return Fail(api, io, "template ls", st);
  if (o.json) {
    *io.out << ToJson(resp);
    return 0;
  }
  std::vector<std::vector<std::string>> rows = {kTemplateHeader};
  for (const sbx::v1::Template& t : resp.templates()) rows.push_back(TemplateRow(t, io));
  *io.out << FormatTable(rows, {2, 3, 4, 5});
  return 0;
}

int TemplateVerb(const Options& o, const Api& api, Io& io) {
  auto* t = api.templates;
  if (o.command == Command::kTemplateInspect) {
    return ForEachId<sbx::v1::GetTemplateRequest, sbx::v1::Template>(
        o, api, io, "template inspect",
        [t](grpc::ClientContext* c, const auto& r, auto* p) { return t->Get(c, r, p); },
        [](auto& r, const std::string& n) { r.set_name(n); },
        [&](const std::string&, const sbx::v1::Template& tp) { *io.out << ToJson(tp); });
  }
  return ForEachId<sbx::v1::DeleteTemplateRequest, sbx::v1::DeleteTemplateResponse>(
      o, api, io, "template rm",
      [t](grpc::ClientContext* c, const auto& r, auto* p) { return t->Delete(c, r, p); },
      [](auto& r, const std::string& n) { r.set_name(n); },
      [&](const std::string& n, const auto&) { *io.out << n << "\n"; });
}

}  // namespace

absl::StatusOr<std::shared_ptr<grpc::Channel>> Connect(const std::string& addr) {
  std::string target;
  if (absl::StartsWith(addr, "unix:")) {
    target = addr;  // gRPC's own syntax: unix:///abs/path or unix:rel
  } else if (absl::StartsWith(addr, "tcp://")) {
    target = addr.substr(6);
  } else if (addr.find("://") == std::string::npos) {
    target = addr;
  } else {
    return absl::InvalidArgumentError(absl::StrCat(
        "bad address \"", addr, "\": use unix:///path or tcp://HOST:PORT"));
  }
  grpc::ChannelArguments args;
  // Chunks are 256 KiB; leave room for larger daemon messages (a long
  // list page).
  args.SetMaxReceiveMessageSize(64 << 20);
  return grpc::CreateCustomChannel(target, grpc::InsecureChannelCredentials(), args);
}

int SetTimeouts(const Options& o, const Api& api, Io& io) {
  sbx::v1::SetTimeoutsRequest req;
  req.set_id(o.ids[0]);
  if (o.idle_timeout) SetDuration(*o.idle_timeout, req.mutable_idle_timeout());
  if (o.ttl) SetDuration(*o.ttl, req.mutable_ttl());
  grpc::ClientContext ctx;
  Authorize(api, ctx);
  sbx::v1::Sandbox sb;
  grpc::Status st = api.sandboxes->SetTimeouts(&ctx, req, &sb);
  if (!st.ok()) return Fail(api, io, "set-timeouts", st);
  *io.out << (o.json ? ToJson(sb) : sb.id() + "\n");
  return 0;
}

int RunCommand(const Options& o, const Api& api, Io& io) {
  switch (o.command) {
    case Command::kRun: return Run(o, api, io);
    case Command::kCreate: return Create(o, api, io);
    case Command::kExec: return Exec(o, api, io);
    case Command::kCp: return Cp(o, api, io);
    case Command::kLs: return Ls(o, api, io);
    case Command::kStat: return Stat(o, api, io);
    case Command::kCat: return Cat(o, api, io);
    case Command::kRmFile: return RmFile(o, api, io);
    case Command::kList: return List(o, api, io);
    case Command::kInspect:
    case Command::kSleep:
    case Command::kWake:
    case Command::kRm: return SandboxVerb(o, api, io);
    case Command::kSetTimeouts: return SetTimeouts(o, api, io);
    case Command::kTemplateBuild: return TemplateBuild(o, api, io);
    case Command::kTemplateLs: return TemplateLs(o, api, io);
    case Command::kTemplateRm:
    case Command::kTemplateInspect: return TemplateVerb(o, api, io);
    case Command::kNone: break;
  }
  *io.err << Usage(Command::kNone);
  return kExitUsage;
}

}  // namespace sbx::ctl
