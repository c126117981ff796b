// metrics.h: what the plugin tells operators about its work, as events.
//
// The adapters and the service report events through one Metrics interface;
// an implementation turns them into whatever the operator scrapes
// (PrometheusMetrics in server/metrics.h) or drops them (NoMetrics). Labels
// come from bounded sets only: RPC method names, canonical status codes,
// endpoint names ("StopAndQuarantineFile", "token"), HTTP status codes,
// error reasons and configured tenant names; never an id, a hash or a secret.
//
//   Metrics& metrics = ...;
//   metrics.UpstreamAnswered("GetMachineAction", "200", absl::Milliseconds(12));
//
// Every method is thread-safe, cheap, never blocks on I/O and never fails.
#ifndef DEFENDER_ADAPTERS_COMMON_METRICS_H_
#define DEFENDER_ADAPTERS_COMMON_METRICS_H_

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace defender {

// Metrics receives the plugin's events.
class Metrics {
 public:
  virtual ~Metrics() = default;

  // RpcStarted counts a call of `method` in flight; RpcFinished ends it with
  // its final `code` after `latency`. Each started call finishes once.
  virtual void RpcStarted(absl::string_view method) = 0;
  virtual void RpcFinished(absl::string_view method, absl::StatusCode code,
                           absl::Duration latency) = 0;

  // UpstreamAnswered records one HTTP exchange with Defender or Entra ID:
  // `endpoint` names it, `result` is the HTTP status ("200", "429") or, when
  // no answer came, the transport's error reason ("UPSTREAM_TIMEOUT").
  virtual void UpstreamAnswered(absl::string_view endpoint, absl::string_view result,
                                absl::Duration latency) = 0;

  // LimiterWaited records a rate slot granted after waiting `wait` (zero: at
  // once) for `tenant`'s budget of `api`; LimiterRejected one refused with
  // `reason` (RATE_LIMITED: not before the deadline; CANCELLED).
  // LimiterWaiting moves the count of callers waiting now by `delta`.
  virtual void LimiterWaited(absl::string_view tenant, absl::string_view api,
                             absl::Duration wait) = 0;
  virtual void LimiterRejected(absl::string_view tenant, absl::string_view api,
                               absl::string_view reason) = 0;
  virtual void LimiterWaiting(int delta) = 0;

  // TokenRefreshed records one token request of `tenant`'s credential (the
  // cache missed): `failure_reason` is empty when a token came back, else the
  // error's reason (TOKEN_REQUEST_REJECTED, ...).
  virtual void TokenRefreshed(absl::string_view tenant, absl::string_view failure_reason,
                              absl::Duration latency) = 0;

  // SharedBudgetMode reports the Redis-shared budget (--redis-url) turning
  // shared (true) or degraded to local shares (false). Default: dropped.
  virtual void SharedBudgetMode(bool shared) {}
};

// NoMetrics drops every event.
class NoMetrics final : public Metrics {
 public:
  // Get is a process-wide instance.
  static NoMetrics& Get() {
    static NoMetrics* instance = new NoMetrics();
    return *instance;
  }
  void RpcStarted(absl::string_view) override {}
  void RpcFinished(absl::string_view, absl::StatusCode, absl::Duration) override {}
  void UpstreamAnswered(absl::string_view, absl::string_view, absl::Duration) override {}
  void LimiterWaited(absl::string_view, absl::string_view, absl::Duration) override {}
  void LimiterRejected(absl::string_view, absl::string_view, absl::string_view) override {}
  void LimiterWaiting(int) override {}
  void TokenRefreshed(absl::string_view, absl::string_view, absl::Duration) override {}
};

}  // namespace defender

#endif  // DEFENDER_ADAPTERS_COMMON_METRICS_H_
