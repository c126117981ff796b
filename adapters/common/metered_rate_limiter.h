// metered_rate_limiter.h: a RateLimiter that reports what another decides to
// Metrics: each slot granted with how long its caller waited, each refusal
// with its reason, and how many callers are waiting now. Keys are
// "<tenant>/<api>", as the Defender client names them.
//
//   auto limiter = std::make_shared<MeteredRateLimiter>(sliding, metrics);
#ifndef DEFENDER_ADAPTERS_COMMON_METERED_RATE_LIMITER_H_
#define DEFENDER_ADAPTERS_COMMON_METERED_RATE_LIMITER_H_

#include <memory>
#include <string>

#include "adapters/common/clock.h"
#include "adapters/common/metrics.h"
#include "adapters/common/rate_limiter.h"

namespace defender {

// MeteredRateLimiter forwards to `inner`, which it keeps alive. Thread-safe;
// `metrics` and `clock` must outlive it and every slot it is asked for.
class MeteredRateLimiter final : public RateLimiter {
 public:
  MeteredRateLimiter(std::shared_ptr<RateLimiter> inner, Metrics& metrics,
                     Clock& clock = Clock::Real())
      : inner_(std::move(inner)), metrics_(metrics), clock_(clock) {}

  void Acquire(const std::string& key, absl::Time deadline,
               std::shared_ptr<Cancellation> cancellation, Callback done) override;

  RateLimiter& inner() const { return *inner_; }

 private:
  std::shared_ptr<RateLimiter> inner_;
  Metrics& metrics_;
  Clock& clock_;
};

}  // namespace defender

#endif  // DEFENDER_ADAPTERS_COMMON_METERED_RATE_LIMITER_H_
