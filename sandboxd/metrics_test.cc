#include "sandboxd/metrics.h"

#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "base/unique_fd.h"

namespace sbx::sandboxd {
namespace {

using ::testing::HasSubstr;

TEST(MetricsTest, RendersStatesCountersAndCumulativeHistograms) {
  ManagerStats stats;
  stats.sandboxes_by_state[sbx::v1::RUNNING] = 3;
  stats.sandboxes_by_state[sbx::v1::SLEEPING] = 2;
  stats.creates = 7;
  stats.vmm_deaths = 1;
  stats.create_seconds.Observe(0.02);
  stats.create_seconds.Observe(3);
  const std::string text = RenderMetrics(stats);
  EXPECT_THAT(text, HasSubstr("sbx_sandboxes{state=\"running\"} 3\n"));
  EXPECT_THAT(text, HasSubstr("sbx_sandboxes{state=\"sleeping\"} 2\n"));
  EXPECT_THAT(text, HasSubstr("sbx_sandboxes{state=\"failed\"} 0\n"));
  EXPECT_THAT(text, HasSubstr("sbx_creates_total 7\n"));
  EXPECT_THAT(text, HasSubstr("sbx_vmm_deaths_total 1\n"));
  // Buckets are cumulative: 0.02 s falls in le=0.025 and every later one.
  EXPECT_THAT(text, HasSubstr("sbx_create_seconds_bucket{le=\"0.01\"} 0\n"));
  EXPECT_THAT(text, HasSubstr("sbx_create_seconds_bucket{le=\"0.025\"} 1\n"));
  EXPECT_THAT(text, HasSubstr("sbx_create_seconds_bucket{le=\"5\"} 2\n"));
  EXPECT_THAT(text, HasSubstr("sbx_create_seconds_bucket{le=\"+Inf\"} 2\n"));
  EXPECT_THAT(text, HasSubstr("sbx_create_seconds_count 2\n"));
  EXPECT_THAT(text, HasSubstr("# TYPE sbx_create_seconds histogram\n"));
}

std::string Get(const std::string& path, const std::string& request) {
  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, path.c_str(), sizeof(addr.sun_path) - 1);
  if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) return "";
  (void)!::write(fd.get(), request.data(), request.size());
  std::string reply;
  char buf[4096];
  ssize_t n;
  while ((n = ::read(fd.get(), buf, sizeof(buf))) > 0) reply.append(buf, static_cast<size_t>(n));
  return reply;
}

TEST(MetricsTest, ServesGetMetricsOverHttp) {
  const std::string path = absl::StrCat("/tmp/sbx_metrics_test_", ::getpid(), ".sock");
  int scrapes = 0;
  auto server = MetricsServer::Start("unix://" + path, [&] {
    ++scrapes;
    return std::string("sbx_up 1\n");
  });
  ASSERT_TRUE(server.ok()) << server.status();
  std::string reply = Get(path, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
  EXPECT_THAT(reply, HasSubstr("HTTP/1.0 200 OK\r\n"));
  EXPECT_THAT(reply, HasSubstr("Content-Length: 9\r\n"));
  EXPECT_THAT(reply, HasSubstr("\r\n\r\nsbx_up 1\n"));
  EXPECT_THAT(Get(path, "GET /other HTTP/1.1\r\n\r\n"), HasSubstr("404 Not Found"));
  server->reset();
  EXPECT_EQ(scrapes, 1);
  ::unlink(path.c_str());
  EXPECT_FALSE(MetricsServer::Start("http://nope", [] { return std::string(); }).ok());
}

}  // namespace
}  // namespace sbx::sandboxd
