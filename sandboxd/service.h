#ifndef SBX_SANDBOXD_SERVICE_H_
#define SBX_SANDBOXD_SERVICE_H_

#include <string>

#include "absl/status/status.h"
#include "grpcpp/grpcpp.h"
#include "sandboxd/manager.h"
#include "sbx/v1/sandbox.grpc.pb.h"

// sandboxd's gRPC services: thin translations between sbx.v1 and the
// Manager (which holds the logic) and the guest agent's protocol.
//
// Synchronous gRPC services: every call ends in blocking work on a VM
// (vsock I/O, a restore, a snapshot), so each runs on a thread of the
// server's pool rather than in a callback reactor.

namespace sbx::sandboxd {

// One helper maps absl::Status to grpc::Status (the codes are the same
// numbers).
grpc::Status ToGrpc(const absl::Status& status);

// TCP access needs `authorization: Bearer TOKEN`; "" = no check (unix
// socket, whose file mode is the access control).
class Authorizer {
 public:
  explicit Authorizer(std::string token) : token_(std::move(token)) {}
  grpc::Status Check(const grpc::ServerContext* context) const;

 private:
  std::string token_;
};

class SandboxService final : public sbx::v1::Sandboxes::Service {
 public:
  SandboxService(Manager& manager, const Authorizer& auth) : manager_(manager), auth_(auth) {}

  grpc::Status Create(grpc::ServerContext* context, const sbx::v1::CreateSandboxRequest* request,
                      sbx::v1::Sandbox* response) override;
  grpc::Status Get(grpc::ServerContext* context, const sbx::v1::GetSandboxRequest* request,
                   sbx::v1::Sandbox* response) override;
  grpc::Status List(grpc::ServerContext* context, const sbx::v1::ListSandboxesRequest* request,
                    sbx::v1::ListSandboxesResponse* response) override;
  grpc::Status Delete(grpc::ServerContext* context, const sbx::v1::DeleteSandboxRequest* request,
                      sbx::v1::DeleteSandboxResponse* response) override;
  grpc::Status Exec(grpc::ServerContext* context, const sbx::v1::ExecRequest* request,
                    grpc::ServerWriter<sbx::v1::ExecEvent>* writer) override;
  grpc::Status ExecInteractive(
      grpc::ServerContext* context,
      grpc::ServerReaderWriter<sbx::v1::ExecEvent, sbx::v1::ExecInput>* stream) override;
  grpc::Status ReadFile(grpc::ServerContext* context, const sbx::v1::ReadFileRequest* request,
                        grpc::ServerWriter<sbx::v1::FileChunk>* writer) override;
  grpc::Status WriteFile(grpc::ServerContext* context,
                         grpc::ServerReader<sbx::v1::WriteFileRequest>* reader,
                         sbx::v1::WriteFileResponse* response) override;
  grpc::Status ListDir(grpc::ServerContext* context, const sbx::v1::ListDirRequest* request,
                       sbx::v1::ListDirResponse* response) override;
  grpc::Status Stat(grpc::ServerContext* context, const sbx::v1::StatRequest* request,
                    sbx::v1::FileInfo* response) override;
  grpc::Status Remove(grpc::ServerContext* context, const sbx::v1::RemoveRequest* request,
                      sbx::v1::RemoveResponse* response) override;
  grpc::Status Sleep(grpc::ServerContext* context, const sbx::v1::SleepRequest* request,
                     sbx::v1::Sandbox* response) override;
  grpc::Status Wake(grpc::ServerContext* context, const sbx::v1::WakeRequest* request,
                    sbx::v1::Sandbox* response) override;
  grpc::Status SetTimeouts(grpc::ServerContext* context,
                           const sbx::v1::SetTimeoutsRequest* request,
                           sbx::v1::Sandbox* response) override;

 private:
  // Exec and ExecInteractive: runs `request` and streams its events;
  // `input` (may be null) forwards stdin and signals.
  grpc::Status RunExec(
      grpc::ServerContext* context, const sbx::v1::ExecRequest& request, bool interactive,
      const std::function<bool(const sbx::v1::ExecEvent&)>& write,
      grpc::ServerReaderWriter<sbx::v1::ExecEvent, sbx::v1::ExecInput>* input);

  Manager& manager_;
  const Authorizer& auth_;
};

class TemplateService final : public sbx::v1::Templates::Service {
 public:
  TemplateService(Manager& manager, const Authorizer& auth) : manager_(manager), auth_(auth) {}

  grpc::Status Create(grpc::ServerContext* context, const sbx::v1::CreateTemplateRequest* request,
                      grpc::ServerWriter<sbx::v1::TemplateProgress>* writer) override;
  grpc::Status Get(grpc::ServerContext* context, const sbx::v1::GetTemplateRequest* request,
                   sbx::v1::Template* response) override;
  grpc::Status List(grpc::ServerContext* context, const sbx::v1::ListTemplatesRequest* request,
                    sbx::v1::ListTemplatesResponse* response) override;
  grpc::Status Delete(grpc::ServerContext* context, const sbx::v1::DeleteTemplateRequest* request,
                      sbx::v1::DeleteTemplateResponse* response) override;

 private:
  Manager& manager_;
  const Authorizer& auth_;
};

// Validates a guest path from a client: absolute, no NUL, at most 4096
// bytes.
absl::Status ValidateGuestPath(const std::string& path);

}  // namespace sbx::sandboxd

#endif  // SBX_SANDBOXD_SERVICE_H_
