// vmm_ctl: drives a running sbx-vmm over its control socket (--control),
// for the benchmark scripts: one request per invocation.
//
//   vmm_ctl SOCKET pause | resume | shutdown | stats
//   vmm_ctl SOCKET snapshot DIR      (pause, full snapshot into DIR)
//
// Exit status 0 on success, 1 with the VMM's error on stderr otherwise.
#include <cstdio>
#include <string>

#include "vmm/control_client.h"

namespace {

int Fail(const absl::Status& s) {
  std::fprintf(stderr, "vmm_ctl: %s\n", std::string(s.message()).c_str());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fputs("usage: vmm_ctl SOCKET pause|resume|shutdown|stats|snapshot DIR\n",
               stderr);
    return 2;
  }
  auto client = sbx::vmm::ControlClient::Connect(argv[1]);
  if (!client.ok()) return Fail(client.status());
  const std::string op = argv[2];
  if (op == "pause") {
    absl::Status s = (*client)->Pause();
    return s.ok() ? 0 : Fail(s);
  }
  if (op == "resume") {
    absl::Status s = (*client)->Resume();
    return s.ok() ? 0 : Fail(s);
  }
  if (op == "shutdown") {
    absl::Status s = (*client)->Shutdown();
    return s.ok() ? 0 : Fail(s);
  }
  if (op == "stats") {
    auto stats = (*client)->Stats();
    if (!stats.ok()) return Fail(stats.status());
    std::printf("rss %llu\n", static_cast<unsigned long long>(stats->vmm_rss_bytes()));
    return 0;
  }
  if (op == "snapshot" && argc == 4) {
    absl::Status s = (*client)->Pause();
    if (!s.ok()) return Fail(s);
    auto result = (*client)->Snapshot(argv[3]);
    if (!result.ok()) return Fail(result.status());
    return 0;
  }
  std::fprintf(stderr, "vmm_ctl: unknown request '%s'\n", op.c_str());
  return 2;
}
