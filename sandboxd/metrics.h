#ifndef SBX_SANDBOXD_METRICS_H_
#define SBX_SANDBOXD_METRICS_H_

#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "base/unique_fd.h"
#include "sandboxd/manager.h"

// sandboxd's Prometheus metrics: the text exposition format, served by a
// minimal HTTP endpoint (GET /metrics) on its own thread.

namespace sbx::sandboxd {

// The text format (version 0.0.4) of `stats`.
std::string RenderMetrics(const ManagerStats& stats);

class MetricsServer {
 public:
  // `addr`: tcp://HOST:PORT or unix:///PATH. `render` is called per scrape.
  static absl::StatusOr<std::unique_ptr<MetricsServer>> Start(
      const std::string& addr, std::function<std::string()> render);
  ~MetricsServer();

 private:
  MetricsServer(UniqueFd listener, std::function<std::string()> render);
  void Serve();

  UniqueFd listener_;
  UniqueFd stop_;  // eventfd
  std::function<std::string()> render_;
  std::thread thread_;
};

}  // namespace sbx::sandboxd

#endif  // SBX_SANDBOXD_METRICS_H_
