// The gRPC surface of sandboxd, in process: the real services and manager
// over a unix socket, VMs faked by real sbx-agents (testing/fake_backend.h).
#include "sandboxd/service.h"

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <thread>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "grpcpp/grpcpp.h"
#include "grpcpp/health_check_service_interface.h"
#include "gtest/gtest.h"
#include "sandboxd/testing/fake_backend.h"

namespace sbx::sandboxd {
namespace {

using ::testing::HasSubstr;

class ServiceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    static int n = 0;
    dir_ = absl::StrCat("/tmp/sbxst", ::getpid(), "_", n++);
    std::filesystem::remove_all(dir_);
    registry_ = std::make_shared<testing::Registry>();
    ManagerOptions o = testing::FakeManagerOptions(dir_);
    auto m = Manager::Create(o, std::make_unique<testing::FakeBackend>(registry_, SBX_AGENT_BINARY));
    ASSERT_TRUE(m.ok()) << m.status();
    manager_ = std::move(*m);
    Serve("");
  }

  void Serve(const std::string& token) {
    auth_ = std::make_unique<Authorizer>(token);
    sandboxes_ = std::make_unique<SandboxService>(*manager_, *auth_);
    templates_ = std::make_unique<TemplateService>(*manager_, *auth_);
    grpc::EnableDefaultHealthCheckService(true);
    grpc::ServerBuilder builder;
    const std::string addr = absl::StrCat("unix:", dir_, "/sandboxd.sock");
    builder.AddListeningPort(addr, grpc::InsecureServerCredentials());
    builder.RegisterService(sandboxes_.get());
    builder.RegisterService(templates_.get());
    server_ = builder.BuildAndStart();
    ASSERT_NE(server_, nullptr);
    channel_ = grpc::CreateChannel(addr, grpc::InsecureChannelCredentials());
    stub_ = sbx::v1::Sandboxes::NewStub(channel_);
    tstub_ = sbx::v1::Templates::NewStub(channel_);
  }

  void TearDown() override {
    stub_.reset();
    tstub_.reset();
    channel_.reset();
    if (server_ != nullptr) server_->Shutdown(std::chrono::system_clock::now());
    manager_.reset();
    testing::KillAll(*registry_);
    std::filesystem::remove_all(dir_);
  }

  sbx::v1::Sandbox Create() {
    grpc::ClientContext ctx;
    sbx::v1::CreateSandboxRequest r;
    (*r.mutable_env())["GREETING"] = "hello";
    sbx::v1::Sandbox s;
    grpc::Status st = stub_->Create(&ctx, r, &s);
    EXPECT_TRUE(st.ok()) << st.error_message();
    return s;
  }

  struct ExecOutput {
    std::string out, err;
    sbx::v1::Exited exited;
    bool got_started = false;
    grpc::Status status;
  };
  ExecOutput Exec(const sbx::v1::ExecRequest& r) {
    grpc::ClientContext ctx;
    ExecOutput o;
    auto reader = stub_->Exec(&ctx, r);
    sbx::v1::ExecEvent e;
    while (reader->Read(&e)) {
      if (e.has_started()) o.got_started = true;
      o.out += e.stdout();
      o.err += e.stderr();
      if (e.has_exited()) o.exited = e.exited();
    }
    o.status = reader->Finish();
    return o;
  }

  std::string dir_;
  std::shared_ptr<testing::Registry> registry_;
  std::unique_ptr<Manager> manager_;
  std::unique_ptr<Authorizer> auth_;
  std::unique_ptr<SandboxService> sandboxes_;
  std::unique_ptr<TemplateService> templates_;
  std::unique_ptr<grpc::Server> server_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<sbx::v1::Sandboxes::Stub> stub_;
  std::unique_ptr<sbx::v1::Templates::Stub> tstub_;
};

TEST_F(ServiceTest, ExecStreamsOutputAndTheExitWithTheSandboxEnv) {
  sbx::v1::Sandbox s = Create();
  sbx::v1::ExecRequest r;
  r.set_sandbox_id(s.id());
  r.set_shell("echo $GREETING; echo oops >&2; exit 3");
  ExecOutput o = Exec(r);
  ASSERT_TRUE(o.status.ok()) << o.status.error_message();
  EXPECT_TRUE(o.got_started);
  EXPECT_EQ(o.out, "hello\n");
  EXPECT_EQ(o.err, "oops\n");
  EXPECT_EQ(o.exited.exit_code(), 3);

  r.set_shell("kill -KILL $$");
  o = Exec(r);
  EXPECT_EQ(o.exited.signal(), 9);

  r.clear_shell();
  r.add_argv("sleep");
  r.add_argv("10");
  r.mutable_timeout()->set_nanos(200'000'000);
  o = Exec(r);
  EXPECT_TRUE(o.exited.timed_out());

  sbx::v1::ExecRequest bad;
  bad.set_sandbox_id(s.id());
  EXPECT_EQ(Exec(bad).status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  bad.set_shell("true");
  bad.set_sandbox_id("sb-0000000000000000");
  EXPECT_EQ(Exec(bad).status.error_code(), grpc::StatusCode::NOT_FOUND);
}

TEST_F(ServiceTest, InteractiveExecForwardsStdinAndSignals) {
  sbx::v1::Sandbox s = Create();
  grpc::ClientContext ctx;
  auto stream = stub_->ExecInteractive(&ctx);
  sbx::v1::ExecInput in;
  in.mutable_start()->set_sandbox_id(s.id());
  in.mutable_start()->add_argv("cat");
  ASSERT_TRUE(stream->Write(in));
  in.Clear();
  in.set_stdin("ping\n");
  ASSERT_TRUE(stream->Write(in));
  sbx::v1::ExecEvent e;
  std::string out;
  while (out.find("ping\n") == std::string::npos && stream->Read(&e)) out += e.stdout();
  EXPECT_EQ(out, "ping\n");
  in.Clear();
  in.set_signal(15);
  ASSERT_TRUE(stream->Write(in));
  sbx::v1::Exited exited;
  while (stream->Read(&e)) {
    if (e.has_exited()) {
      exited = e.exited();
      stream->WritesDone();
    }
  }
  EXPECT_TRUE(stream->Finish().ok());
  EXPECT_EQ(exited.signal(), 15);
}

TEST_F(ServiceTest, FilesRoundTripAndBadPathsAreRefused) {
  sbx::v1::Sandbox s = Create();
  const std::string path = absl::StrCat(dir_, "/guestfile.bin");  // the fake's guest is the host
  std::string data;
  for (int i = 0; i < (3 << 20); ++i) data += static_cast<char>(i * 7);
  {
    grpc::ClientContext ctx;
    sbx::v1::WriteFileResponse resp;
    auto writer = stub_->WriteFile(&ctx, &resp);
    sbx::v1::WriteFileRequest r;
    r.mutable_header()->set_sandbox_id(s.id());
    r.mutable_header()->set_path(path);
    r.mutable_header()->set_mode(0600);
    ASSERT_TRUE(writer->Write(r));
    for (size_t off = 0; off < data.size(); off += 1 << 20) {
      r.Clear();
      r.set_data(data.substr(off, 1 << 20));
      ASSERT_TRUE(writer->Write(r));
    }
    writer->WritesDone();
    grpc::Status st = writer->Finish();
    ASSERT_TRUE(st.ok()) << st.error_message();
    EXPECT_EQ(resp.bytes_written(), data.size());
  }
  {
    grpc::ClientContext ctx;
    sbx::v1::ReadFileRequest r;
    r.set_sandbox_id(s.id());
    r.set_path(path);
    auto reader = stub_->ReadFile(&ctx, r);
    sbx::v1::FileChunk c;
    std::string got;
    bool first = true;
    while (reader->Read(&c)) {
      if (first) {
        EXPECT_EQ(c.info().size(), data.size());
        EXPECT_EQ(c.info().mode(), 0600u);
        first = false;
      }
      got += c.data();
    }
    ASSERT_TRUE(reader->Finish().ok());
    EXPECT_TRUE(got == data) << "read back " << got.size() << " bytes";
  }
  {
    grpc::ClientContext ctx;
    sbx::v1::ListDirRequest r;
    r.set_sandbox_id(s.id());
    r.set_path(dir_);
    sbx::v1::ListDirResponse resp;
    ASSERT_TRUE(stub_->ListDir(&ctx, r, &resp).ok());
    bool found = false;
    for (const auto& e : resp.entries()) found |= e.name() == "guestfile.bin";
    EXPECT_TRUE(found);
  }
  {
    grpc::ClientContext ctx;
    sbx::v1::RemoveRequest r;
    r.set_sandbox_id(s.id());
    r.set_path(path);
    sbx::v1::RemoveResponse resp;
    ASSERT_TRUE(stub_->Remove(&ctx, r, &resp).ok());
  }
  {
    grpc::ClientContext ctx;
    sbx::v1::StatRequest r;
    r.set_sandbox_id(s.id());
    r.set_path(path);
    sbx::v1::FileInfo info;
    EXPECT_EQ(stub_->Stat(&ctx, r, &info).error_code(), grpc::StatusCode::NOT_FOUND);
  }
  for (const char* bad : {"relative/path", ""}) {
    grpc::ClientContext ctx;
    sbx::v1::StatRequest r;
    r.set_sandbox_id(s.id());
    r.set_path(bad);
    sbx::v1::FileInfo info;
    EXPECT_EQ(stub_->Stat(&ctx, r, &info).error_code(), grpc::StatusCode::INVALID_ARGUMENT) << bad;
  }
}

// A hostile client (issue 7): output it never stops reading until it
// cancels, an upload that never ends. Each ends when the client goes, the
// upload replaces nothing, and the sandbox is free again: it can be used
// and deleted at once.
TEST_F(ServiceTest, EndlessStreamsEndWithTheClientAndReleaseTheSandbox) {
  sbx::v1::Sandbox s = Create();
  {
    grpc::ClientContext ctx;
    sbx::v1::ExecRequest r;
    r.set_sandbox_id(s.id());
    r.set_shell("yes endless");
    auto reader = stub_->Exec(&ctx, r);
    sbx::v1::ExecEvent e;
    size_t got = 0;
    while (got < (16u << 20) && reader->Read(&e)) got += e.stdout().size();
    EXPECT_GE(got, 16u << 20);
    ctx.TryCancel();
    while (reader->Read(&e)) {
    }
    EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
  }
  // The cancel reached the guest: the command is killed, not left running.
  // (pgrep's pattern does not match the shell that runs pgrep.)
  bool gone = false;
  for (int i = 0; i < 150 && !gone; ++i) {
    gone = ::system("pgrep -f 'yes endles[s]' >/dev/null") != 0;
    if (!gone) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  EXPECT_TRUE(gone) << "the cancelled command still runs in the sandbox";
  // And the call's handler let go of the sandbox: an exec streaming holds
  // off Sleep, this one no longer does (the requests below wake it).
  absl::Status slept = absl::UnknownError("not tried");
  for (int i = 0; i < 100 && !slept.ok(); ++i) {
    slept = manager_->Sleep(s.id()).status();
    if (!slept.ok()) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  EXPECT_TRUE(slept.ok()) << slept;
  const std::string path = absl::StrCat(dir_, "/upload.bin");
  {
    std::ofstream(path) << "before\n";
    grpc::ClientContext ctx;
    sbx::v1::WriteFileResponse resp;
    auto writer = stub_->WriteFile(&ctx, &resp);
    sbx::v1::WriteFileRequest r;
    r.mutable_header()->set_sandbox_id(s.id());
    r.mutable_header()->set_path(path);
    ASSERT_TRUE(writer->Write(r));
    r.Clear();
    r.set_data(std::string(1 << 20, 'u'));
    for (int i = 0; i < 32; ++i) ASSERT_TRUE(writer->Write(r));
    ctx.TryCancel();
    EXPECT_FALSE(writer->Finish().ok());
  }
  // The upload never finished: the file is what it was.
  std::string after;
  std::getline(std::ifstream(path), after);
  EXPECT_EQ(after, "before");
  sbx::v1::ExecRequest echo;
  echo.set_sandbox_id(s.id());
  echo.set_shell("echo free");
  EXPECT_EQ(Exec(echo).out, "free\n");
  {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
    sbx::v1::DeleteSandboxRequest r;
    r.set_id(s.id());
    sbx::v1::DeleteSandboxResponse resp;
    grpc::Status st = stub_->Delete(&ctx, r, &resp);
    EXPECT_TRUE(st.ok()) << st.error_message();
  }
  EXPECT_EQ(manager_->List({})->sandboxes_size(), 0);
}

TEST_F(ServiceTest, LifecycleCallsAndTheirErrorCodes) {
  sbx::v1::Sandbox s = Create();
  {
    grpc::ClientContext ctx;
    sbx::v1::SleepRequest r;
    r.set_id(s.id());
    sbx::v1::Sandbox out;
    ASSERT_TRUE(stub_->Sleep(&ctx, r, &out).ok());
    EXPECT_EQ(out.state(), sbx::v1::SLEEPING);
  }
  // Any request wakes it.
  sbx::v1::ExecRequest r;
  r.set_sandbox_id(s.id());
  r.set_shell("echo awake");
  EXPECT_EQ(Exec(r).out, "awake\n");
  {
    grpc::ClientContext ctx;
    sbx::v1::GetSandboxRequest g;
    g.set_id(s.id());
    sbx::v1::Sandbox out;
    ASSERT_TRUE(stub_->Get(&ctx, g, &out).ok());
    EXPECT_EQ(out.state(), sbx::v1::RUNNING);
    EXPECT_EQ(out.wakes(), 1u);
  }
  {
    grpc::ClientContext ctx;
    sbx::v1::CreateSandboxRequest c;
    c.set_vcpus(1000);
    sbx::v1::Sandbox out;
    grpc::Status st = stub_->Create(&ctx, c, &out);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
    EXPECT_THAT(st.error_message(), HasSubstr("vCPUs"));
  }
  {
    grpc::ClientContext ctx;
    sbx::v1::ListTemplatesResponse out;
    ASSERT_TRUE(tstub_->List(&ctx, {}, &out).ok());
    ASSERT_EQ(out.templates_size(), 1);
    EXPECT_EQ(out.templates(0).name(), "default");
    EXPECT_EQ(out.templates(0).sandboxes(), 1u);
  }
  {
    grpc::ClientContext ctx;
    sbx::v1::DeleteTemplateRequest d;
    d.set_name("default");
    sbx::v1::DeleteTemplateResponse out;
    EXPECT_EQ(tstub_->Delete(&ctx, d, &out).error_code(),
              grpc::StatusCode::FAILED_PRECONDITION);
  }
  {
    grpc::ClientContext ctx;
    sbx::v1::DeleteSandboxRequest d;
    d.set_id(s.id());
    sbx::v1::DeleteSandboxResponse out;
    ASSERT_TRUE(stub_->Delete(&ctx, d, &out).ok());
  }
  {
    grpc::ClientContext ctx;
    sbx::v1::GetSandboxRequest g;
    g.set_id(s.id());
    sbx::v1::Sandbox out;
    EXPECT_EQ(stub_->Get(&ctx, g, &out).error_code(), grpc::StatusCode::NOT_FOUND);
  }
}

TEST_F(ServiceTest, ATokenIsRequiredWhenConfigured) {
  server_->Shutdown(std::chrono::system_clock::now());
  server_.reset();
  std::filesystem::remove(dir_ + "/sandboxd.sock");
  Serve("s3cret");
  {
    grpc::ClientContext ctx;
    sbx::v1::ListSandboxesResponse out;
    EXPECT_EQ(stub_->List(&ctx, {}, &out).error_code(), grpc::StatusCode::UNAUTHENTICATED);
  }
  {
    grpc::ClientContext ctx;
    ctx.AddMetadata("authorization", "Bearer wrong!");
    sbx::v1::ListSandboxesResponse out;
    EXPECT_EQ(stub_->List(&ctx, {}, &out).error_code(), grpc::StatusCode::UNAUTHENTICATED);
  }
  {
    grpc::ClientContext ctx;
    ctx.AddMetadata("authorization", "Bearer s3cret");
    sbx::v1::ListSandboxesResponse out;
    EXPECT_TRUE(stub_->List(&ctx, {}, &out).ok());
  }
}

}  // namespace
}  // namespace sbx::sandboxd
