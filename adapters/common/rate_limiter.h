// rate_limiter.h: the budget of requests the plugin may send to Defender.
//
// Defender allows each app, in each tenant, 100 calls a minute and 1,500 an
// hour per API. Every request to Defender first takes a slot from the limiter
// under a key naming the tenant and the API ("contoso/StopAndQuarantineFile").
// A request the budget would refuse is never sent.
//
//   limiter.Acquire("default/StopAndQuarantineFile", deadline, cancellation,
//                   [](absl::Status slot) { if (slot.ok()) send(); else fail(slot); });
//
// Implementations: SlidingWindowLimiter (server/rate_limiter.h) in one process;
// a shared one across replicas later.
#ifndef DEFENDER_ADAPTERS_COMMON_RATE_LIMITER_H_
#define DEFENDER_ADAPTERS_COMMON_RATE_LIMITER_H_

#include <memory>
#include <string>

#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "absl/time/time.h"
#include "adapters/common/cancellation.h"

namespace defender {

// RateLimiter hands out request slots. Thread-safe.
class RateLimiter {
 public:
  using Callback = absl::AnyInvocable<void(absl::Status) &&>;

  virtual ~RateLimiter() = default;

  // Acquire reserves the earliest slot for `key` and calls `done` exactly once:
  //  - OK when the slot is reached: at once (possibly inside Acquire) if one is
  //    free now, else later from a timer, without holding a thread meanwhile;
  //  - RESOURCE_EXHAUSTED (reason RATE_LIMITED, with a RetryInfo saying when a
  //    slot frees up) at once, without waiting, when the earliest slot is after
  //    `deadline`;
  //  - CANCELLED when `cancellation` (may be null) is raised while waiting; the
  //    reserved slot is given back.
  virtual void Acquire(const std::string& key, absl::Time deadline,
                       std::shared_ptr<Cancellation> cancellation, Callback done) = 0;
};

// UnlimitedRateLimiter grants every slot at once (limits turned off).
class UnlimitedRateLimiter final : public RateLimiter {
 public:
  void Acquire(const std::string& key, absl::Time deadline,
               std::shared_ptr<Cancellation> cancellation, Callback done) override {
    std::move(done)(absl::OkStatus());
  }
};

}  // namespace defender

#endif  // DEFENDER_ADAPTERS_COMMON_RATE_LIMITER_H_
