#include "server/metrics.h"

#include <exception>

#include "absl/strings/str_cat.h"
#include "adapters/common/error.h"
#include "prometheus/counter.h"
#include "prometheus/exposer.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"
#include "prometheus/text_serializer.h"

namespace defender {
namespace {

using prometheus::Histogram;

// Latencies of RPCs and HTTP exchanges: 1 ms to 1 min.
const Histogram::BucketBoundaries& LatencyBuckets() {
  static const auto* buckets = new Histogram::BucketBoundaries{
      0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60};
  return *buckets;
}

// Rate-slot waits: at once to an hour (Defender's hour window).
const Histogram::BucketBoundaries& WaitBuckets() {
  static const auto* buckets = new Histogram::BucketBoundaries{
      0.001, 0.01, 0.1, 1, 5, 15, 30, 60, 300, 900, 1800, 3600};
  return *buckets;
}

double Seconds(absl::Duration d) { return absl::ToDoubleSeconds(d); }

std::string S(absl::string_view text) { return std::string(text); }

}  // namespace

PrometheusMetrics::PrometheusMetrics() : registry_(std::make_shared<prometheus::Registry>()) {
  auto& r = *registry_;
  rpcs_ = &prometheus::BuildCounter()
               .Name("defender_plugin_rpcs_total")
               .Help("RPCs finished, by method and gRPC status code")
               .Register(r);
  rpc_duration_ = &prometheus::BuildHistogram()
                       .Name("defender_plugin_rpc_duration_seconds")
                       .Help("Time from an RPC's arrival to its status, by method")
                       .Register(r);
  rpcs_in_flight_ = &prometheus::BuildGauge()
                         .Name("defender_plugin_rpcs_in_flight")
                         .Help("RPCs being served now, by method")
                         .Register(r);
  upstream_ = &prometheus::BuildCounter()
                   .Name("defender_plugin_upstream_requests_total")
                   .Help("HTTP exchanges with Defender and Entra ID, by endpoint and result "
                         "(HTTP status, or the transport's error reason when no answer came)")
                   .Register(r);
  upstream_duration_ = &prometheus::BuildHistogram()
                            .Name("defender_plugin_upstream_request_duration_seconds")
                            .Help("Time of one HTTP exchange, by endpoint")
                            .Register(r);
  slots_ = &prometheus::BuildCounter()
                .Name("defender_plugin_rate_limiter_slots_total")
                .Help("Rate slots granted, by tenant and API")
                .Register(r);
  slot_wait_ = &prometheus::BuildHistogram()
                    .Name("defender_plugin_rate_limiter_wait_seconds")
                    .Help("Time a request waited for its rate slot (0: at once), by tenant")
                    .Register(r);
  rejections_ = &prometheus::BuildCounter()
                     .Name("defender_plugin_rate_limiter_rejections_total")
                     .Help("Rate slots refused, by tenant, API and reason (RATE_LIMITED: the "
                           "budget frees no slot before the call's deadline; CANCELLED)")
                     .Register(r);
  waiting_ = &prometheus::BuildGauge()
                  .Name("defender_plugin_rate_limiter_waiting")
                  .Help("Requests waiting for a rate slot now")
                  .Register(r)
                  .Add({});
  token_refreshes_ = &prometheus::BuildCounter()
                          .Name("defender_plugin_token_refreshes_total")
                          .Help("Token requests to Entra ID (or a managed identity endpoint), "
                                "by tenant: cache misses, not cache hits")
                          .Register(r);
  token_failures_ = &prometheus::BuildCounter()
                         .Name("defender_plugin_token_refresh_failures_total")
                         .Help("Token requests that failed, by tenant and error reason")
                         .Register(r);
  token_duration_ = &prometheus::BuildHistogram()
                         .Name("defender_plugin_token_refresh_duration_seconds")
                         .Help("Time of one token request, by tenant")
                         .Register(r);
  shared_budget_ = &prometheus::BuildGauge()
                       .Name("defender_plugin_shared_budget")
                       .Help("With --redis-url: 1 while the rate budget is shared in Redis, 0 "
                             "while Redis is unreachable and this replica keeps a local share")
                       .Register(r);
  shared_budget_degraded_ = &prometheus::BuildCounter()
                                .Name("defender_plugin_shared_budget_degraded_total")
                                .Help("Times Redis became unreachable and the budget fell back "
                                      "to local shares")
                                .Register(r);
  prometheus::BuildGauge()
      .Name("defender_plugin_build_info")
      .Help("1, labelled with the plugin's version")
      .Register(r)
      .Add({{"version", DEFENDER_PLUGIN_VERSION}})
      .Set(1);
}

PrometheusMetrics::~PrometheusMetrics() {
  // The endpoint's threads read the registry: stop them first.
  exposer_.reset();
}

absl::Status PrometheusMetrics::Serve(const std::string& address) {
  if (exposer_ != nullptr) {
    return MakeError(absl::StatusCode::kFailedPrecondition, "metrics are already served",
                     "METRICS_ALREADY_SERVED");
  }
  try {
    exposer_ = std::make_unique<prometheus::Exposer>(address, 2);
  } catch (const std::exception& e) {
    return MakeError(absl::StatusCode::kUnavailable,
                     absl::StrCat("--metrics-listen ", address, ": cannot serve metrics there (",
                                  e.what(), ")"),
                     "METRICS_LISTEN_FAILED", {{"address", address}});
  }
  exposer_->RegisterCollectable(registry_);
  const std::vector<int> ports = exposer_->GetListeningPorts();
  port_ = ports.empty() ? 0 : ports.front();
  return absl::OkStatus();
}

std::string PrometheusMetrics::Text() const {
  return prometheus::TextSerializer().Serialize(registry_->Collect());
}

void PrometheusMetrics::RpcStarted(absl::string_view method) {
  rpcs_in_flight_->Add({{"method", S(method)}}).Increment();
}

void PrometheusMetrics::RpcFinished(absl::string_view method, absl::StatusCode code,
                                    absl::Duration latency) {
  rpcs_in_flight_->Add({{"method", S(method)}}).Decrement();
  rpcs_->Add({{"method", S(method)}, {"code", absl::StatusCodeToString(code)}}).Increment();
  rpc_duration_->Add({{"method", S(method)}}, LatencyBuckets()).Observe(Seconds(latency));
}

void PrometheusMetrics::UpstreamAnswered(absl::string_view endpoint, absl::string_view result,
                                         absl::Duration latency) {
  upstream_->Add({{"endpoint", S(endpoint)}, {"result", S(result)}}).Increment();
  upstream_duration_->Add({{"endpoint", S(endpoint)}}, LatencyBuckets())
      .Observe(Seconds(latency));
}

void PrometheusMetrics::LimiterWaited(absl::string_view tenant, absl::string_view api,
                                      absl::Duration wait) {
  slots_->Add({{"tenant", S(tenant)}, {"api", S(api)}}).Increment();
  slot_wait_->Add({{"tenant", S(tenant)}}, WaitBuckets()).Observe(Seconds(wait));
}

void PrometheusMetrics::LimiterRejected(absl::string_view tenant, absl::string_view api,
                                        absl::string_view reason) {
  rejections_->Add({{"tenant", S(tenant)}, {"api", S(api)}, {"reason", S(reason)}}).Increment();
}

void PrometheusMetrics::LimiterWaiting(int delta) { waiting_->Increment(delta); }

void PrometheusMetrics::SharedBudgetMode(bool shared) {
  shared_budget_->Add({}).Set(shared ? 1 : 0);
  if (!shared) shared_budget_degraded_->Add({}).Increment();
}

void PrometheusMetrics::TokenRefreshed(absl::string_view tenant, absl::string_view failure_reason,
                                       absl::Duration latency) {
  token_refreshes_->Add({{"tenant", S(tenant)}}).Increment();
  if (!failure_reason.empty()) {
    token_failures_->Add({{"tenant", S(tenant)}, {"reason", S(failure_reason)}}).Increment();
  }
  token_duration_->Add({{"tenant", S(tenant)}}, LatencyBuckets()).Observe(Seconds(latency));
}

}  // namespace defender
