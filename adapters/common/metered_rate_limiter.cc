#include "adapters/common/metered_rate_limiter.h"

#include <atomic>
#include <utility>

#include "adapters/common/error.h"

namespace defender {

void MeteredRateLimiter::Acquire(const std::string& key, absl::Time deadline,
                                 std::shared_ptr<Cancellation> cancellation, Callback done) {
  const size_t slash = key.find('/');
  std::string tenant = slash == std::string::npos ? key : key.substr(0, slash);
  std::string api = slash == std::string::npos ? "" : key.substr(slash + 1);
  // 0: Acquire is running; 1: answered inside it; 2: returned before the
  // answer, so the caller is counted as waiting until the answer comes.
  auto phase = std::make_shared<std::atomic<int>>(0);
  const absl::Time asked = clock_.Now();
  inner_->Acquire(
      key, deadline, std::move(cancellation),
      [this, tenant = std::move(tenant), api = std::move(api), asked, phase,
       done = std::move(done)](absl::Status slot) mutable {
        int expected = 0;
        const bool waited = !phase->compare_exchange_strong(expected, 1);
        if (waited) metrics_.LimiterWaiting(-1);
        if (slot.ok()) {
          metrics_.LimiterWaited(tenant, api, waited ? clock_.Now() - asked : absl::ZeroDuration());
        } else {
          std::string reason = ErrorReason(slot);
          metrics_.LimiterRejected(tenant, api,
                                   reason.empty() ? absl::StatusCodeToString(slot.code()) : reason);
        }
        std::move(done)(std::move(slot));
      });
  int expected = 0;
  if (phase->compare_exchange_strong(expected, 2)) metrics_.LimiterWaiting(+1);
}

}  // namespace defender
