// A stand-in for sandboxd in sandboxctl's tests: serves the fake services
// (fake_services.h) at `--listen ADDR` until SIGTERM. With --state-dir DIR
// it leaves DIR/fake-sandboxd-was-here, so a test sees the flag arrived.

#include <signal.h>

#include <cstring>
#include <fstream>
#include <iostream>
#include <string>

#include "sandboxd/ctl/fake_services.h"

int main(int argc, char** argv) {
  std::string listen, state_dir;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (strcmp(argv[i], "--listen") == 0) listen = argv[i + 1];
    if (strcmp(argv[i], "--state-dir") == 0) state_dir = argv[i + 1];
  }
  if (listen.empty()) {
    std::cerr << "fake sandboxd: --listen missing\n";
    return 2;
  }
  if (!state_dir.empty()) std::ofstream(state_dir + "/fake-sandboxd-was-here") << "yes\n";

  // SIGTERM is taken by sigwait below, not by whichever thread it hits.
  sigset_t term;
  sigemptyset(&term);
  sigaddset(&term, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &term, nullptr);

  sbx::ctl::fake::FakeSandboxes sandboxes;
  sbx::ctl::fake::FakeTemplates templates;
  grpc::ServerBuilder builder;
  builder.AddListeningPort(listen, grpc::InsecureServerCredentials());
  builder.RegisterService(&sandboxes);
  builder.RegisterService(&templates);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr) {
    std::cerr << "fake sandboxd: cannot listen at " << listen << "\n";
    return 1;
  }
  std::cerr << "fake sandboxd: serving at " << listen << "\n";
  int sig = 0;
  sigwait(&term, &sig);
  server->Shutdown();
  return 0;
}
