// observability-bench: what the plugin's observability costs per RPC, in CPU
// time on this machine, beside baselines measured in the same run.
//
//   observability-bench [--iterations N]
//
// One "RPC's worth" is what a QuarantineFile reports: RpcStarted, one rate
// slot, one upstream exchange (the POST), RpcFinished, and its log line with
// the fields a real call carries. Printed, in ns per RPC:
//   metrics  PrometheusMetrics vs NoMetrics (the baseline: no observability)
//   log      the JSON line vs the text line, formatted (not written)
// and, last, one JSON line of the figures for bench/run.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "absl/strings/str_cat.h"
#include "server/log.h"
#include "server/metrics.h"

namespace {

using Clock = std::chrono::steady_clock;

// PerCall runs `body` `n` times and returns ns per run.
template <typename Body>
double PerCall(int n, Body body) {
  const auto start = Clock::now();
  for (int i = 0; i < n; ++i) body(i);
  return std::chrono::duration<double, std::nano>(Clock::now() - start).count() / n;
}

void ReportRpc(defender::Metrics& metrics) {
  metrics.RpcStarted("QuarantineFile");
  metrics.LimiterWaited("contoso", "StopAndQuarantineFile", absl::ZeroDuration());
  metrics.UpstreamAnswered("StopAndQuarantineFile", "201", absl::Microseconds(800));
  metrics.RpcFinished("QuarantineFile", absl::StatusCode::kOk, absl::Microseconds(1200));
}

defender::LogFields Fields(int i) {
  return {{"rpc", std::string("QuarantineFile")},
          {"call_id", std::string("3f2a9c1e5b7d4e60")},
          {"caller", std::string("ipv4:127.0.0.1:52814")},
          {"peer", std::string("ipv4:127.0.0.1:52814")},
          {"tenant", std::string("contoso")},
          {"machine", std::string("1e5bc9d7e413ddd7902c2932e418702b84d0cc07")},
          {"file", std::string("87662bc3d60e4200ceaf7aae249d1c343f4b83c9")},
          {"request_id", absl::StrCat("playbook-run-", i)},
          {"action_id", std::string("141408d1-384c-4c19-8b57-ba39e378011a")},
          {"code", std::string("OK")},
          {"upstream_status", int64_t{201}},
          {"latency_ms", 1.234}};
}

}  // namespace

int main(int argc, char** argv) {
  int n = 200000;
  for (int i = 1; i + 1 < argc; ++i) {
    if (std::string(argv[i]) == "--iterations") n = std::atoi(argv[i + 1]);
  }
  if (n <= 0) {
    std::fprintf(stderr, "usage: observability-bench [--iterations N>0]\n");
    return 2;
  }
  defender::PrometheusMetrics prometheus;
  defender::Metrics& none = defender::NoMetrics::Get();
  // Warm up: every label set exists before timing, as in a running plugin.
  ReportRpc(prometheus);
  size_t sink = 0;
  const double metrics_none = PerCall(n, [&](int) { ReportRpc(none); });
  const double metrics_prom = PerCall(n, [&](int) { ReportRpc(prometheus); });
  const double log_text = PerCall(n, [&](int i) {
    sink += defender::FormatLogRecord(defender::LogFormat::kText, "2026-12-03T07:02:11.481Z",
                                      defender::LogLevel::kInfo, "QuarantineFile OK", Fields(i))
                .size();
  });
  const double log_json = PerCall(n, [&](int i) {
    sink += defender::FormatLogRecord(defender::LogFormat::kJson, "2026-12-03T07:02:11.481Z",
                                      defender::LogLevel::kInfo, "QuarantineFile OK", Fields(i))
                .size();
  });
  std::printf("observability per RPC (%d iterations):\n", n);
  std::printf("  metrics: prometheus %8.0f ns   no metrics (baseline) %6.0f ns\n", metrics_prom,
              metrics_none);
  std::printf("  log:     json line  %8.0f ns   text line (baseline)  %6.0f ns   json/text %.2f\n",
              log_json, log_text, log_json / log_text);
  std::printf("{\"iterations\":%d,\"metrics_prometheus_ns\":%.0f,\"metrics_none_ns\":%.0f,"
              "\"log_json_ns\":%.0f,\"log_text_ns\":%.0f,\"bytes\":%zu}\n",
              n, metrics_prom, metrics_none, log_json, log_text, sink);
  return 0;
}
