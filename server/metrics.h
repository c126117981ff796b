// metrics.h: the plugin's Prometheus metrics (Debian's prometheus-cpp), and
// the HTTP endpoint that serves them (--metrics-listen).
//
//   PrometheusMetrics metrics;
//   absl::Status serving = metrics.Serve("127.0.0.1:9464");  // GET /metrics
//
// Families (all prefixed defender_plugin_):
//   rpcs_total{method,code}                      counter    finished RPCs
//   rpc_duration_seconds{method}                 histogram  RPC latency
//   rpcs_in_flight{method}                       gauge      RPCs being served
//   upstream_requests_total{endpoint,result}     counter    HTTP exchanges with
//                                                Defender / Entra ID (result: HTTP
//                                                status or transport error reason)
//   upstream_request_duration_seconds{endpoint}  histogram  their latency
//   rate_limiter_slots_total{tenant,api}         counter    rate slots granted
//   rate_limiter_wait_seconds{tenant}            histogram  time waited for a slot
//   rate_limiter_rejections_total{tenant,api,reason} counter refused slots
//   rate_limiter_waiting                         gauge      callers waiting now
//   token_refreshes_total{tenant}                counter    token requests
//   token_refresh_failures_total{tenant,reason}  counter    of them, failed
//   token_refresh_duration_seconds{tenant}       histogram  their latency
//   build_info{version}                          gauge      1
#ifndef DEFENDER_SERVER_METRICS_H_
#define DEFENDER_SERVER_METRICS_H_

#include <memory>
#include <string>

#include "absl/status/status.h"
#include "adapters/common/metrics.h"

namespace prometheus {
class Exposer;
class Registry;
template <typename T>
class Family;
class Counter;
class Gauge;
class Histogram;
}  // namespace prometheus

namespace defender {

// PrometheusMetrics keeps the plugin's metrics in a prometheus-cpp registry.
// Thread-safe.
class PrometheusMetrics final : public Metrics {
 public:
  PrometheusMetrics();
  ~PrometheusMetrics() override;

  // Serve starts serving GET /metrics (text exposition format) on `address`
  // ("HOST:PORT"; port 0 picks a free one) from two threads of its own.
  // FAILED_PRECONDITION when already serving; UNAVAILABLE when the address
  // cannot be bound.
  absl::Status Serve(const std::string& address);
  // port is the bound port once Serve succeeded, else 0.
  int port() const { return port_; }

  // Text is the metrics in the text exposition format, as /metrics serves them.
  std::string Text() const;

  void RpcStarted(absl::string_view method) override;
  void RpcFinished(absl::string_view method, absl::StatusCode code,
                   absl::Duration latency) override;
  void UpstreamAnswered(absl::string_view endpoint, absl::string_view result,
                        absl::Duration latency) override;
  void LimiterWaited(absl::string_view tenant, absl::string_view api,
                     absl::Duration wait) override;
  void LimiterRejected(absl::string_view tenant, absl::string_view api,
                       absl::string_view reason) override;
  void LimiterWaiting(int delta) override;
  void TokenRefreshed(absl::string_view tenant, absl::string_view failure_reason,
                      absl::Duration latency) override;
  void SharedBudgetMode(bool shared) override;

 private:
  std::shared_ptr<prometheus::Registry> registry_;
  prometheus::Family<prometheus::Counter>* rpcs_;
  prometheus::Family<prometheus::Histogram>* rpc_duration_;
  prometheus::Family<prometheus::Gauge>* rpcs_in_flight_;
  prometheus::Family<prometheus::Counter>* upstream_;
  prometheus::Family<prometheus::Histogram>* upstream_duration_;
  prometheus::Family<prometheus::Counter>* slots_;
  prometheus::Family<prometheus::Histogram>* slot_wait_;
  prometheus::Family<prometheus::Counter>* rejections_;
  prometheus::Gauge* waiting_;
  prometheus::Family<prometheus::Counter>* token_refreshes_;
  prometheus::Family<prometheus::Counter>* token_failures_;
  prometheus::Family<prometheus::Histogram>* token_duration_;
  prometheus::Family<prometheus::Gauge>* shared_budget_;
  prometheus::Family<prometheus::Counter>* shared_budget_degraded_;
  std::unique_ptr<prometheus::Exposer> exposer_;
  int port_ = 0;
};

}  // namespace defender

#endif  // DEFENDER_SERVER_METRICS_H_
