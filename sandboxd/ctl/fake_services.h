#ifndef SBX_SANDBOXD_CTL_FAKE_SERVICES_H_
#define SBX_SANDBOXD_CTL_FAKE_SERVICES_H_

// Test fakes of sandboxd's two services for sandboxctl's tests (and the
// fake sandboxd binary its embedded-daemon test starts): sandboxes in a map,
// files in a map, exec answered by a script. Not the daemon's behaviour in
// full: the real daemon is tested in sandboxd/ and tests/.

#include <atomic>
#include <algorithm>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "grpcpp/grpcpp.h"
#include "sbx/v1/sandbox.grpc.pb.h"

namespace sbx::ctl::fake {

using namespace sbx::v1;

inline constexpr size_t kChunk = 256 * 1024;

inline std::string Key(const std::string& id, const std::string& path) {
  return id + ":" + path;
}

inline std::string DirName(const std::string& path) {
  size_t slash = path.rfind('/');
  return slash == 0 ? "/" : path.substr(0, slash);
}

// Keeps sandboxes in a map; exec answers by argv[0]:
//   script       the events in `script`, in order
//   echo ARGS    ARGS and a newline on stdout, exits 0
//   cat          echoes stdin to stdout until close_stdin, exits 0
//   wait-signal  waits for a signal: exits killed by it, unless argv[1] is
//                "ignore" (then runs until the call is cancelled)
class FakeSandboxes final : public Sandboxes::Service {
 public:
  absl::Mutex mu;
  std::map<std::string, Sandbox> sandboxes ABSL_GUARDED_BY(mu);
  struct File {
    std::string data;
    uint32_t mode;
  };
  std::map<std::string, File> files ABSL_GUARDED_BY(mu);
  std::vector<ExecEvent> script ABSL_GUARDED_BY(mu);
  std::vector<ExecRequest> execs ABSL_GUARDED_BY(mu);
  std::vector<int> signals ABSL_GUARDED_BY(mu);
  std::vector<std::string> tokens ABSL_GUARDED_BY(mu);
  CreateSandboxRequest last_create ABSL_GUARDED_BY(mu);
  size_t max_write_chunk ABSL_GUARDED_BY(mu) = 0;
  int list_calls ABSL_GUARDED_BY(mu) = 0;
  int half_closed_execs ABSL_GUARDED_BY(mu) = 0;  // ended by the client's close
  int next_id ABSL_GUARDED_BY(mu) = 1;

  std::string Add(Sandbox sb) {
    absl::MutexLock lock(&mu);
    sb.set_id(absl::StrFormat("sb-%016x", next_id++));
    if (sb.state() == SANDBOX_STATE_UNSPECIFIED) sb.set_state(RUNNING);
    sandboxes[sb.id()] = sb;
    return sb.id();
  }

  grpc::Status Create(grpc::ServerContext* ctx, const CreateSandboxRequest* req,
                      Sandbox* resp) override {
    Sandbox sb;
    sb.set_template_(req->template_().empty() ? "default" : req->template_());
    sb.set_vcpus(req->vcpus() ? req->vcpus() : 1);
    sb.set_memory_mib(req->memory_mib() ? req->memory_mib() : 512);
    *sb.mutable_labels() = req->labels();
    std::string id = Add(sb);
    absl::MutexLock lock(&mu);
    last_create = *req;
    auto auth = ctx->client_metadata().find("authorization");
    if (auth != ctx->client_metadata().end()) {
      tokens.emplace_back(auth->second.data(), auth->second.size());
    }
    *resp = sandboxes[id];
    return grpc::Status::OK;
  }

  grpc::Status Find(const std::string& id, Sandbox* out = nullptr)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    auto it = sandboxes.find(id);
    if (it == sandboxes.end()) {
      return grpc::Status(grpc::StatusCode::NOT_FOUND, "no sandbox " + id);
    }
    if (out) *out = it->second;
    return grpc::Status::OK;
  }

  grpc::Status Get(grpc::ServerContext*, const GetSandboxRequest* req,
                   Sandbox* resp) override {
    absl::MutexLock lock(&mu);
    return Find(req->id(), resp);
  }

  // Two per page: the client must follow next_page_token.
  grpc::Status List(grpc::ServerContext*, const ListSandboxesRequest* req,
                    ListSandboxesResponse* resp) override {
    absl::MutexLock lock(&mu);
    ++list_calls;
    for (auto it = sandboxes.upper_bound(req->page_token()); it != sandboxes.end(); ++it) {
      bool match = true;
      for (const auto& [k, v] : req->labels()) {
        auto l = it->second.labels().find(k);
        match = match && l != it->second.labels().end() && l->second == v;
      }
      if (!match) continue;
      if (resp->sandboxes_size() == 2) {
        resp->set_next_page_token(resp->sandboxes(1).id());
        break;
      }
      *resp->add_sandboxes() = it->second;
    }
    return grpc::Status::OK;
  }

  grpc::Status Delete(grpc::ServerContext*, const DeleteSandboxRequest* req,
                      DeleteSandboxResponse*) override {
    absl::MutexLock lock(&mu);
    if (grpc::Status st = Find(req->id()); !st.ok()) return st;
    sandboxes.erase(req->id());
    return grpc::Status::OK;
  }

  grpc::Status Exec(grpc::ServerContext*, const ExecRequest* req,
                    grpc::ServerWriter<ExecEvent>* writer) override {
    {
      absl::MutexLock lock(&mu);
      if (grpc::Status st = Find(req->sandbox_id()); !st.ok()) return st;
      execs.push_back(*req);
    }
    ExecEvent ev;
    ev.mutable_started()->set_process_id(7);
    ev.mutable_started()->set_pid(42);
    writer->Write(ev);
    return grpc::Status::OK;
  }

  grpc::Status ExecInteractive(
      grpc::ServerContext*,
      grpc::ServerReaderWriter<ExecEvent, ExecInput>* stream) override {
    ExecInput in;
    if (!stream->Read(&in) || !in.has_start()) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "start first");
    }
    const ExecRequest req = in.start();
    std::vector<ExecEvent> events;
    {
      absl::MutexLock lock(&mu);
      if (grpc::Status st = Find(req.sandbox_id()); !st.ok()) return st;
      execs.push_back(req);
      events = script;
    }
    const std::string prog = req.argv_size() > 0 ? req.argv(0) : "";
    ExecEvent ev;
    ev.mutable_started()->set_pid(42);
    stream->Write(ev);
    // As sandboxd: after `exited`, the call ends when the client closes
    // its side (a client that never does hangs the test).
    auto finish = [&](const ExecEvent& last) {
      stream->Write(last);
      ExecInput ignored;
      while (stream->Read(&ignored)) {
      }
      absl::MutexLock lock(&mu);
      ++half_closed_execs;
      return grpc::Status::OK;
    };
    if (prog == "script") {
      for (size_t i = 0; i + 1 < events.size(); ++i) stream->Write(events[i]);
      if (events.empty()) return grpc::Status::OK;
      if (!events.back().has_exited()) {
        stream->Write(events.back());
        return grpc::Status::OK;
      }
      return finish(events.back());
    }
    ExecEvent exited;
    exited.mutable_exited();
    if (prog == "echo") {
      ExecEvent out;
      std::string line;
      for (int i = 1; i < req.argv_size(); ++i) line += (i > 1 ? " " : "") + req.argv(i);
      out.set_stdout(line + "\n");
      stream->Write(out);
      return finish(exited);
    }
    while (stream->Read(&in)) {
      if (prog == "cat" && in.has_stdin()) {
        ExecEvent out;
        out.set_stdout(in.stdin());
        stream->Write(out);
      } else if (prog == "cat" && in.has_close_stdin()) {
        return finish(exited);
      } else if (in.input_case() == ExecInput::kSignal) {
        {
          absl::MutexLock lock(&mu);
          signals.push_back(in.signal());
        }
        if (prog == "wait-signal" && (req.argv_size() < 2 || req.argv(1) != "ignore")) {
          exited.mutable_exited()->set_signal(in.signal());
          return finish(exited);
        }
      }
    }
    return grpc::Status(grpc::StatusCode::CANCELLED, "cancelled");
  }

  grpc::Status ReadFile(grpc::ServerContext*, const ReadFileRequest* req,
                        grpc::ServerWriter<FileChunk>* writer) override {
    File f;
    {
      absl::MutexLock lock(&mu);
      if (grpc::Status st = Find(req->sandbox_id()); !st.ok()) return st;
      auto it = files.find(Key(req->sandbox_id(), req->path()));
      if (it == files.end()) {
        return grpc::Status(grpc::StatusCode::NOT_FOUND, req->path() + ": no such file");
      }
      f = it->second;
    }
    size_t off = 0;
    do {
      FileChunk c;
      if (off == 0) {
        c.mutable_info()->set_size(f.data.size());
        c.mutable_info()->set_mode(f.mode);
        c.mutable_info()->set_type(REGULAR);
      }
      c.set_data(f.data.substr(off, kChunk));
      off += kChunk;
      writer->Write(c);
    } while (off < f.data.size());
    return grpc::Status::OK;
  }

  grpc::Status WriteFile(grpc::ServerContext*,
                         grpc::ServerReader<WriteFileRequest>* reader,
                         WriteFileResponse* resp) override {
    WriteFileRequest req;
    if (!reader->Read(&req) || !req.has_header()) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "header first");
    }
    const WriteFileRequest::Header h = req.header();
    {
      absl::MutexLock lock(&mu);
      if (grpc::Status st = Find(h.sandbox_id()); !st.ok()) return st;
    }
    std::string data;
    size_t max_chunk = 0;
    while (reader->Read(&req)) {
      data += req.data();
      max_chunk = std::max(max_chunk, req.data().size());
    }
    absl::MutexLock lock(&mu);
    max_write_chunk = std::max(max_write_chunk, max_chunk);
    files[Key(h.sandbox_id(), h.path())] = {data, h.mode() ? h.mode() : 0644};
    resp->set_bytes_written(data.size());
    return grpc::Status::OK;
  }

  grpc::Status ListDir(grpc::ServerContext*, const ListDirRequest* req,
                       ListDirResponse* resp) override {
    absl::MutexLock lock(&mu);
    if (grpc::Status st = Find(req->sandbox_id()); !st.ok()) return st;
    for (const auto& [key, f] : files) {
      std::string path = key.substr(key.find(':') + 1);
      if (key.rfind(req->sandbox_id() + ":", 0) != 0 || DirName(path) != req->path()) continue;
      FileInfo* e = resp->add_entries();
      e->set_name(path.substr(path.rfind('/') + 1));
      e->set_type(REGULAR);
      e->set_size(f.data.size());
      e->set_mode(f.mode);
      e->mutable_modified_at()->set_seconds(1714568640);
    }
    return grpc::Status::OK;
  }

  grpc::Status Stat(grpc::ServerContext*, const StatRequest* req,
                    FileInfo* resp) override {
    absl::MutexLock lock(&mu);
    if (grpc::Status st = Find(req->sandbox_id()); !st.ok()) return st;
    std::string prefix = Key(req->sandbox_id(), req->path());
    if (auto it = files.find(prefix); it != files.end()) {
      resp->set_type(REGULAR);
      resp->set_size(it->second.data.size());
      resp->set_mode(it->second.mode);
      return grpc::Status::OK;
    }
    auto child = files.lower_bound(prefix + "/");
    if (req->path() == "/" ||
        (child != files.end() && absl::StartsWith(child->first, prefix + "/"))) {
      resp->set_type(DIRECTORY);
      resp->set_mode(0755);
      return grpc::Status::OK;
    }
    return grpc::Status(grpc::StatusCode::NOT_FOUND, req->path() + ": no such file");
  }

  grpc::Status Remove(grpc::ServerContext*, const RemoveRequest* req,
                      RemoveResponse*) override {
    absl::MutexLock lock(&mu);
    if (files.erase(Key(req->sandbox_id(), req->path())) == 0) {
      return grpc::Status(grpc::StatusCode::NOT_FOUND, req->path() + ": no such file");
    }
    return grpc::Status::OK;
  }

  grpc::Status Sleep(grpc::ServerContext*, const SleepRequest* req,
                     Sandbox* resp) override {
    absl::MutexLock lock(&mu);
    if (grpc::Status st = Find(req->id()); !st.ok()) return st;
    sandboxes[req->id()].set_state(SLEEPING);
    *resp = sandboxes[req->id()];
    return grpc::Status::OK;
  }
  grpc::Status SetTimeouts(grpc::ServerContext*, const SetTimeoutsRequest* req,
                           Sandbox* resp) override {
    absl::MutexLock lock(&mu);
    if (grpc::Status st = Find(req->id()); !st.ok()) return st;
    Sandbox& sb = sandboxes[req->id()];
    if (req->has_idle_timeout()) *sb.mutable_idle_timeout() = req->idle_timeout();
    if (req->has_ttl()) *sb.mutable_ttl() = req->ttl();
    *resp = sb;
    return grpc::Status::OK;
  }
};

class FakeTemplates final : public Templates::Service {
 public:
  // Whether "default" exists (Get); a Create of it makes it exist.
  std::atomic<bool> have_default{true};

  grpc::Status Get(grpc::ServerContext*, const GetTemplateRequest* req,
                   Template* resp) override {
    if (req->name() != "default" || !have_default) {
      return grpc::Status(grpc::StatusCode::NOT_FOUND, "no template " + req->name());
    }
    resp->set_name("default");
    resp->set_state(READY);
    return grpc::Status::OK;
  }
  grpc::Status Create(grpc::ServerContext*, const CreateTemplateRequest* req,
                      grpc::ServerWriter<TemplateProgress>* writer) override {
    if (req->name() == "default") have_default = true;
    TemplateProgress p;
    p.set_step("booting");
    p.set_elapsed_seconds(0.1);
    writer->Write(p);
    p.set_step("snapshotting");
    p.set_elapsed_seconds(12.34);
    writer->Write(p);
    p.Clear();
    p.set_elapsed_seconds(12.5);
    Template* t = p.mutable_template_();
    t->set_name(req->name());
    t->set_state(req->name() == "broken" ? BROKEN : READY);
    if (t->state() == BROKEN) t->set_failure("the agent never answered");
    t->set_vcpus(1);
    t->set_memory_mib(512);
    t->set_disk_mib(1024);
    writer->Write(p);
    return grpc::Status::OK;
  }
  grpc::Status List(grpc::ServerContext*, const ListTemplatesRequest*,
                    ListTemplatesResponse* resp) override {
    Template* t = resp->add_templates();
    t->set_name("default");
    t->set_state(READY);
    t->set_vcpus(2);
    t->set_memory_mib(512);
    t->set_disk_mib(2048);
    t->set_sandboxes(3);
    return grpc::Status::OK;
  }
  grpc::Status Delete(grpc::ServerContext*, const DeleteTemplateRequest* req,
                      DeleteTemplateResponse*) override {
    if (req->name() == "default") {
      return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                          "template default is used by 3 sandboxes");
    }
    return grpc::Status(grpc::StatusCode::NOT_FOUND, "no template " + req->name());
  }
};

}  // namespace sbx::ctl::fake

#endif  // SBX_SANDBOXD_CTL_FAKE_SERVICES_H_
