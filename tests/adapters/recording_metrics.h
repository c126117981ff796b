// recording_metrics.h: a Metrics for tests that keeps every event as one line
// of text ("upstream StopAndQuarantineFile 201"), in order.
#ifndef DEFENDER_TESTS_ADAPTERS_RECORDING_METRICS_H_
#define DEFENDER_TESTS_ADAPTERS_RECORDING_METRICS_H_

#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "adapters/common/metrics.h"

namespace defender::testing {

class RecordingMetrics final : public Metrics {
 public:
  void RpcStarted(absl::string_view method) override { Add("rpc_started ", method); }
  void RpcFinished(absl::string_view method, absl::StatusCode code,
                   absl::Duration latency) override {
    Add("rpc_finished ", method, " ", absl::StatusCodeToString(code));
    SetLatency(latency);
  }
  void UpstreamAnswered(absl::string_view endpoint, absl::string_view result,
                        absl::Duration latency) override {
    Add("upstream ", endpoint, " ", result);
    SetLatency(latency);
  }
  void LimiterWaited(absl::string_view tenant, absl::string_view api,
                     absl::Duration wait) override {
    Add("slot ", tenant, " ", api, " waited ", absl::FormatDuration(wait));
  }
  void LimiterRejected(absl::string_view tenant, absl::string_view api,
                       absl::string_view reason) override {
    Add("rejected ", tenant, " ", api, " ", reason);
  }
  void LimiterWaiting(int delta) override { Add("waiting ", delta); }
  void TokenRefreshed(absl::string_view tenant, absl::string_view failure_reason,
                      absl::Duration latency) override {
    Add("token ", tenant, failure_reason.empty() ? " ok" : " failed ", failure_reason);
    SetLatency(latency);
  }

  std::vector<std::string> events() const {
    absl::MutexLock lock(&mu_);
    return events_;
  }
  // last_latency is the latency of the last event that had one.
  absl::Duration last_latency() const {
    absl::MutexLock lock(&mu_);
    return last_latency_;
  }

 private:
  template <typename... Parts>
  void Add(const Parts&... parts) {
    absl::MutexLock lock(&mu_);
    events_.push_back(absl::StrCat(parts...));
  }
  void SetLatency(absl::Duration latency) {
    absl::MutexLock lock(&mu_);
    last_latency_ = latency;
  }

  mutable absl::Mutex mu_;
  std::vector<std::string> events_ ABSL_GUARDED_BY(mu_);
  absl::Duration last_latency_ ABSL_GUARDED_BY(mu_);
};

}  // namespace defender::testing

#endif  // DEFENDER_TESTS_ADAPTERS_RECORDING_METRICS_H_
