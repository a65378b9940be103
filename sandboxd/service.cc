#include "sandboxd/service.h"

#include <atomic>
#include <chrono>
#include <cstring>
#include <thread>
#include <utility>

#include "absl/strings/match.h"
#include "absl/synchronization/notification.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "base/logging.h"
#include "google/protobuf/util/time_util.h"

namespace sbx::sandboxd {
namespace {

using google::protobuf::util::TimeUtil;

constexpr size_t kChunkBytes = 256 * 1024;

sbx::v1::FileInfo ToApi(const agent::FileInfo& in) {
  sbx::v1::FileInfo out;
  out.set_name(in.name());
  switch (in.type()) {
    case agent::FileInfo::FILE: out.set_type(sbx::v1::REGULAR); break;
    case agent::FileInfo::DIRECTORY: out.set_type(sbx::v1::DIRECTORY); break;
    case agent::FileInfo::SYMLINK: out.set_type(sbx::v1::SYMLINK); break;
    default: out.set_type(sbx::v1::OTHER); break;
  }
  out.set_size(in.size());
  out.set_mode(in.mode());
  *out.mutable_modified_at() = TimeUtil::NanosecondsToTimestamp(in.mtime_ns());
  out.set_symlink_target(in.symlink_target());
  return out;
}

// Calls `on_cancel` once if the client cancels before Stop().
class CancelWatch {
 public:
  CancelWatch(grpc::ServerContext* context, std::function<void()> on_cancel)
      : thread_([this, context, on_cancel = std::move(on_cancel)] {
          while (!done_.load()) {
            if (context->IsCancelled()) {
              on_cancel();
              return;
            }
            std::this_thread::sleep_for(std::chrono::milliseconds(50));
          }
        }) {}
  ~CancelWatch() {
    done_.store(true);
    thread_.join();
  }

 private:
  std::atomic<bool> done_{false};
  std::thread thread_;
};

// A token is a secret: compare without an early exit.
bool ConstantTimeEqual(const char* a, const char* b, size_t n) {
  unsigned char diff = 0;
  for (size_t i = 0; i < n; ++i) diff |= static_cast<unsigned char>(a[i] ^ b[i]);
  return diff == 0;
}

}  // namespace

grpc::Status ToGrpc(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()),
                      std::string(status.message()));
}

grpc::Status Authorizer::Check(const grpc::ServerContext* context) const {
  if (token_.empty()) return grpc::Status::OK;
  const auto& metadata = context->client_metadata();
  auto it = metadata.find("authorization");
  const std::string want = absl::StrCat("Bearer ", token_);
  if (it == metadata.end() || it->second.size() != want.size() ||
      !ConstantTimeEqual(it->second.data(), want.data(), want.size())) {
    return grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                        "missing or wrong bearer token (metadata authorization: Bearer TOKEN)");
  }
  return grpc::Status::OK;
}

absl::Status ValidateGuestPath(const std::string& path) {
  if (path.empty() || path[0] != '/') {
    return absl::InvalidArgumentError(absl::StrCat("guest path \"", path.substr(0, 256),
                                                   "\" is not absolute"));
  }
  if (path.size() > 4096 || path.find('\0') != std::string::npos) {
    return absl::InvalidArgumentError("guest path is too long or holds a NUL byte");
  }
  return absl::OkStatus();
}

// The reply of a unary call whose result is a message.
template <typename T>
grpc::Status Reply(absl::StatusOr<T> result, T* response) {
  if (!result.ok()) return ToGrpc(result.status());
  *response = std::move(*result);
  return grpc::Status::OK;
}

#define SBX_AUTH(context)                                   \
  do {                                                      \
    grpc::Status auth_status = auth_.Check(context);        \
    if (!auth_status.ok()) return auth_status;              \
  } while (0)

// ---------------------------------------------------------------- sandboxes

grpc::Status SandboxService::Create(grpc::ServerContext* context,
                                    const sbx::v1::CreateSandboxRequest* request,
                                    sbx::v1::Sandbox* response) {
  SBX_AUTH(context);
  return Reply(manager_.Create(*request), response);
}

grpc::Status SandboxService::Get(grpc::ServerContext* context,
                                 const sbx::v1::GetSandboxRequest* request,
                                 sbx::v1::Sandbox* response) {
  SBX_AUTH(context);
  return Reply(manager_.Get(request->id()), response);
}

grpc::Status SandboxService::List(grpc::ServerContext* context,
                                  const sbx::v1::ListSandboxesRequest* request,
                                  sbx::v1::ListSandboxesResponse* response) {
  SBX_AUTH(context);
  return Reply(manager_.List(*request), response);
}

grpc::Status SandboxService::Delete(grpc::ServerContext* context,
                                    const sbx::v1::DeleteSandboxRequest* request,
                                    sbx::v1::DeleteSandboxResponse*) {
  SBX_AUTH(context);
  return ToGrpc(manager_.Delete(request->id()));
}

grpc::Status SandboxService::Sleep(grpc::ServerContext* context,
                                   const sbx::v1::SleepRequest* request,
                                   sbx::v1::Sandbox* response) {
  SBX_AUTH(context);
  return Reply(manager_.Sleep(request->id()), response);
}

grpc::Status SandboxService::Wake(grpc::ServerContext* context,
                                  const sbx::v1::WakeRequest* request,
                                  sbx::v1::Sandbox* response) {
  SBX_AUTH(context);
  return Reply(manager_.Wake(request->id()), response);
}

grpc::Status SandboxService::SetTimeouts(grpc::ServerContext* context,
                                         const sbx::v1::SetTimeoutsRequest* request,
                                         sbx::v1::Sandbox* response) {
  SBX_AUTH(context);
  return Reply(manager_.SetTimeouts(*request), response);
}

// ---------------------------------------------------------------- exec

grpc::Status SandboxService::Exec(grpc::ServerContext* context,
                                  const sbx::v1::ExecRequest* request,
                                  grpc::ServerWriter<sbx::v1::ExecEvent>* writer) {
  SBX_AUTH(context);
  return RunExec(context, *request, false,
                 [writer](const sbx::v1::ExecEvent& e) { return writer->Write(e); }, nullptr);
}

grpc::Status SandboxService::ExecInteractive(
    grpc::ServerContext* context,
    grpc::ServerReaderWriter<sbx::v1::ExecEvent, sbx::v1::ExecInput>* stream) {
  SBX_AUTH(context);
  sbx::v1::ExecInput first;
  if (!stream->Read(&first) || !first.has_start()) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                        "the first ExecInput must be `start`");
  }
  return RunExec(context, first.start(), true,
                 [stream](const sbx::v1::ExecEvent& e) { return stream->Write(e); }, stream);
}

grpc::Status SandboxService::RunExec(
    grpc::ServerContext* context, const sbx::v1::ExecRequest& request, bool interactive,
    const std::function<bool(const sbx::v1::ExecEvent&)>& write,
    grpc::ServerReaderWriter<sbx::v1::ExecEvent, sbx::v1::ExecInput>* input) {
  if (request.argv().empty() == request.shell().empty()) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                        "give exactly one of argv and shell");
  }
  if (!request.cwd().empty()) {
    if (absl::Status s = ValidateGuestPath(request.cwd()); !s.ok()) return ToGrpc(s);
  }
  if (request.timeout().seconds() < 0 || request.timeout().nanos() < 0) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "timeout must not be negative");
  }
  absl::StatusOr<std::unique_ptr<Manager::Lease>> lease =
      manager_.Acquire(request.sandbox_id(), /*exec=*/!request.background());
  if (!lease.ok()) return ToGrpc(lease.status());

  agent::Exec exec;
  exec.mutable_argv()->CopyFrom(request.argv());
  exec.set_shell(request.shell());
  for (const auto& [k, v] : (*lease)->env()) (*exec.mutable_env())[k] = v;
  for (const auto& [k, v] : request.env()) (*exec.mutable_env())[k] = v;
  exec.set_cwd(request.cwd().empty() ? "/root" : request.cwd());
  if (request.uid() != 0) exec.set_uid(request.uid());
  if (request.gid() != 0) exec.set_gid(request.gid());
  exec.set_stdin(request.stdin());
  exec.set_close_stdin(!interactive);
  exec.set_timeout_ms(static_cast<uint64_t>(
      TimeUtil::DurationToMilliseconds(request.timeout())));
  exec.set_background(request.background());

  const absl::Time start = absl::Now();
  absl::StatusOr<std::unique_ptr<agent::ExecStream>> stream = (*lease)->agent().Start(exec);
  if (!stream.ok()) return ToGrpc(stream.status());
  agent::ExecStream& es = **stream;

  manager_.ObserveExec(absl::ToDoubleSeconds(absl::Now() - start));
  sbx::v1::ExecEvent started;
  started.mutable_started()->set_process_id(es.process_id());
  started.mutable_started()->set_pid(es.pid());
  if (!write(started)) return grpc::Status(grpc::StatusCode::CANCELLED, "client went away");
  if (request.background()) return grpc::Status::OK;

  // The client's cancel (or Ctrl-C in sandboxctl) breaks the agent
  // connection, and the agent kills the foreground process group.
  CancelWatch watch(context, [&es] { es.Abort(); });
  std::thread forwarder;
  absl::Notification input_closed;
  if (input != nullptr) {
    forwarder = std::thread([input, &es, &input_closed] {
      sbx::v1::ExecInput in;
      while (input->Read(&in)) {
        absl::Status s;
        if (in.has_stdin()) s = es.WriteStdin(in.stdin());
        if (in.has_close_stdin() && in.close_stdin()) s = es.CloseStdin();
        if (in.has_signal()) s = es.Signal(in.signal());
        if (!s.ok()) break;
      }
      // The client closed its side: no more stdin.
      (void)es.CloseStdin();
      input_closed.Notify();
    });
  }
  grpc::Status result = grpc::Status::OK;
  for (;;) {
    absl::StatusOr<agent::ExecStream::Event> event = es.Next();
    if (!event.ok()) {
      result = context->IsCancelled()
                   ? grpc::Status(grpc::StatusCode::CANCELLED, "cancelled by the client")
                   : ToGrpc(event.status());
      break;
    }
    sbx::v1::ExecEvent out;
    out.set_dropped_bytes(event->dropped_before);
    switch (event->kind) {
      case agent::ExecStream::Event::Kind::kStdout: out.set_stdout(std::move(event->data)); break;
      case agent::ExecStream::Event::Kind::kStderr: out.set_stderr(std::move(event->data)); break;
      case agent::ExecStream::Event::Kind::kExited: {
        sbx::v1::Exited& exited = *out.mutable_exited();
        if (event->exited.has_signal()) {
          exited.set_signal(event->exited.signal());
        } else {
          exited.set_exit_code(event->exited.exit_code());
        }
        exited.set_timed_out(event->exited.timed_out());
        *exited.mutable_duration() =
            TimeUtil::NanosecondsToDuration(absl::ToInt64Nanoseconds(absl::Now() - start));
        break;
      }
    }
    const bool last = event->kind == agent::ExecStream::Event::Kind::kExited;
    if (!write(out)) {
      result = grpc::Status(grpc::StatusCode::CANCELLED, "client went away");
      es.Abort();
      break;
    }
    if (last) break;
  }
  if (forwarder.joinable()) {
    // The forwarder ends when the client closes its side, which a client
    // does once it has `exited`; one that does not within a few seconds
    // has its call cancelled (a handler may not return while another
    // thread reads its stream).
    if (!result.ok() || !input_closed.WaitForNotificationWithTimeout(absl::Seconds(5))) {
      context->TryCancel();
    }
    es.Abort();
    forwarder.join();
  }
  return result;
}

// ---------------------------------------------------------------- files

grpc::Status SandboxService::ReadFile(grpc::ServerContext* context,
                                      const sbx::v1::ReadFileRequest* request,
                                      grpc::ServerWriter<sbx::v1::FileChunk>* writer) {
  SBX_AUTH(context);
  if (absl::Status s = ValidateGuestPath(request->path()); !s.ok()) return ToGrpc(s);
  absl::StatusOr<std::unique_ptr<Manager::Lease>> lease =
      manager_.Acquire(request->sandbox_id(), false);
  if (!lease.ok()) return ToGrpc(lease.status());
  absl::StatusOr<agent::FileInfo> info = (*lease)->agent().Stat(request->path());
  if (!info.ok()) return ToGrpc(info.status());
  if (info->type() == agent::FileInfo::DIRECTORY) {
    return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                        absl::StrCat(request->path(), " is a directory"));
  }
  sbx::v1::FileChunk first;
  *first.mutable_info() = ToApi(*info);
  if (!writer->Write(first)) return grpc::Status(grpc::StatusCode::CANCELLED, "client went away");
  agent::ReadFile read;
  read.set_path(request->path());
  absl::StatusOr<agent::FileInfo> done = (*lease)->agent().ReadFile(
      read, [&](std::string_view data) -> absl::Status {
        if (context->IsCancelled()) return absl::CancelledError("cancelled by the client");
        sbx::v1::FileChunk chunk;
        chunk.set_data(std::string(data));
        if (!writer->Write(chunk)) return absl::CancelledError("client went away");
        return absl::OkStatus();
      });
  return ToGrpc(done.status());
}

grpc::Status SandboxService::WriteFile(grpc::ServerContext* context,
                                       grpc::ServerReader<sbx::v1::WriteFileRequest>* reader,
                                       sbx::v1::WriteFileResponse* response) {
  SBX_AUTH(context);
  sbx::v1::WriteFileRequest first;
  if (!reader->Read(&first) || !first.has_header()) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                        "the first WriteFileRequest must be `header`");
  }
  const sbx::v1::WriteFileRequest::Header& header = first.header();
  if (absl::Status s = ValidateGuestPath(header.path()); !s.ok()) return ToGrpc(s);
  if (header.mode() > 07777) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "mode holds more than 07777");
  }
  absl::StatusOr<std::unique_ptr<Manager::Lease>> lease =
      manager_.Acquire(header.sandbox_id(), false);
  if (!lease.ok()) return ToGrpc(lease.status());
  agent::WriteFile write;
  write.set_path(header.path());
  write.set_mode(header.mode());
  write.set_make_parents(header.make_parents());
  write.set_append(header.append());
  std::string pending;
  size_t offset = 0;
  bool ended = false;
  bool broken = false;
  absl::StatusOr<uint64_t> written = (*lease)->agent().WriteFile(
      write, [&](char* buffer, size_t size) -> absl::StatusOr<size_t> {
        while (offset == pending.size() && !ended) {
          sbx::v1::WriteFileRequest next;
          if (!reader->Read(&next)) {
            ended = true;
            // A cancelled upload must not replace the file with a prefix.
            if (context->IsCancelled()) broken = true;
            break;
          }
          if (!next.has_data()) {
            broken = true;
            return absl::InvalidArgumentError("only data may follow the header");
          }
          pending = std::move(*next.mutable_data());
          offset = 0;
        }
        if (broken) return absl::CancelledError("the upload was cancelled");
        const size_t n = std::min(size, pending.size() - offset);
        std::memcpy(buffer, pending.data() + offset, n);
        offset += n;
        return n;
      });
  if (!written.ok()) return ToGrpc(written.status());
  response->set_bytes_written(*written);
  return grpc::Status::OK;
}

grpc::Status SandboxService::ListDir(grpc::ServerContext* context,
                                     const sbx::v1::ListDirRequest* request,
                                     sbx::v1::ListDirResponse* response) {
  SBX_AUTH(context);
  if (absl::Status s = ValidateGuestPath(request->path()); !s.ok()) return ToGrpc(s);
  absl::StatusOr<std::unique_ptr<Manager::Lease>> lease =
      manager_.Acquire(request->sandbox_id(), false);
  if (!lease.ok()) return ToGrpc(lease.status());
  absl::StatusOr<std::vector<agent::FileInfo>> entries =
      (*lease)->agent().ListDir(request->path());
  if (!entries.ok()) return ToGrpc(entries.status());
  for (const agent::FileInfo& e : *entries) *response->add_entries() = ToApi(e);
  return grpc::Status::OK;
}

grpc::Status SandboxService::Stat(grpc::ServerContext* context,
                                  const sbx::v1::StatRequest* request,
                                  sbx::v1::FileInfo* response) {
  SBX_AUTH(context);
  if (absl::Status s = ValidateGuestPath(request->path()); !s.ok()) return ToGrpc(s);
  absl::StatusOr<std::unique_ptr<Manager::Lease>> lease =
      manager_.Acquire(request->sandbox_id(), false);
  if (!lease.ok()) return ToGrpc(lease.status());
  absl::StatusOr<agent::FileInfo> info = (*lease)->agent().Stat(request->path());
  if (!info.ok()) return ToGrpc(info.status());
  *response = ToApi(*info);
  return grpc::Status::OK;
}

grpc::Status SandboxService::Remove(grpc::ServerContext* context,
                                    const sbx::v1::RemoveRequest* request,
                                    sbx::v1::RemoveResponse*) {
  SBX_AUTH(context);
  if (absl::Status s = ValidateGuestPath(request->path()); !s.ok()) return ToGrpc(s);
  if (request->path() == "/") {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "refusing to remove /");
  }
  absl::StatusOr<std::unique_ptr<Manager::Lease>> lease =
      manager_.Acquire(request->sandbox_id(), false);
  if (!lease.ok()) return ToGrpc(lease.status());
  return ToGrpc((*lease)->agent().Remove(request->path(), request->recursive()));
}

// ---------------------------------------------------------------- templates

grpc::Status TemplateService::Create(grpc::ServerContext* context,
                                     const sbx::v1::CreateTemplateRequest* request,
                                     grpc::ServerWriter<sbx::v1::TemplateProgress>* writer) {
  SBX_AUTH(context);
  const absl::Time start = absl::Now();
  absl::Mutex write_mu;
  absl::StatusOr<sbx::v1::Template> t =
      manager_.CreateTemplate(*request, [&](const std::string& step) {
        sbx::v1::TemplateProgress progress;
        progress.set_step(step);
        progress.set_elapsed_seconds(absl::ToDoubleSeconds(absl::Now() - start));
        absl::MutexLock lock(&write_mu);
        // A client that went away does not stop the build: the template
        // is still made (and listed) for the next one.
        writer->Write(progress);
      });
  if (!t.ok()) return ToGrpc(t.status());
  sbx::v1::TemplateProgress last;
  last.set_step("ready");
  last.set_elapsed_seconds(absl::ToDoubleSeconds(absl::Now() - start));
  *last.mutable_template_() = std::move(*t);
  absl::MutexLock lock(&write_mu);
  writer->Write(last);
  return grpc::Status::OK;
}

grpc::Status TemplateService::Get(grpc::ServerContext* context,
                                  const sbx::v1::GetTemplateRequest* request,
                                  sbx::v1::Template* response) {
  SBX_AUTH(context);
  return Reply(manager_.GetTemplate(request->name()), response);
}

grpc::Status TemplateService::List(grpc::ServerContext* context,
                                   const sbx::v1::ListTemplatesRequest*,
                                   sbx::v1::ListTemplatesResponse* response) {
  SBX_AUTH(context);
  for (sbx::v1::Template& t : manager_.ListTemplates()) *response->add_templates() = std::move(t);
  return grpc::Status::OK;
}

grpc::Status TemplateService::Delete(grpc::ServerContext* context,
                                     const sbx::v1::DeleteTemplateRequest* request,
                                     sbx::v1::DeleteTemplateResponse*) {
  SBX_AUTH(context);
  return ToGrpc(manager_.DeleteTemplate(request->name()));
}

}  // namespace sbx::sandboxd
