// rate_limiter.h: the in-process RateLimiter: per key, two sliding windows at
// once (by default 100 requests a minute and 1,500 an hour, Defender's
// documented budget per app, tenant and API).
//
// A sliding window log: the times of the slots granted (or reserved for
// waiting callers) in the last window. The earliest slot for a new request is
// the first time at which every window holds fewer than its limit; a caller
// whose slot is in the future waits on a Scheduler timer, holding no thread.
//
//   TimerThread timers;
//   SlidingWindowLimiter limiter({.per_minute = 100, .per_hour = 1500}, timers);
#ifndef DEFENDER_SERVER_RATE_LIMITER_H_
#define DEFENDER_SERVER_RATE_LIMITER_H_

#include <deque>
#include <map>
#include <memory>
#include <string>

#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "adapters/common/clock.h"
#include "adapters/common/rate_limiter.h"
#include "adapters/common/scheduler.h"

namespace defender {

// RateLimits are the windows' sizes; 0 turns a window off.
struct RateLimits {
  int per_minute = 100;
  int per_hour = 1500;
};

// SlidingWindowLimiter is a RateLimiter for one process. Thread-safe.
class SlidingWindowLimiter final : public RateLimiter {
 public:
  SlidingWindowLimiter(RateLimits limits, Scheduler& scheduler, Clock& clock = Clock::Real());
  ~SlidingWindowLimiter() override;

  void Acquire(const std::string& key, absl::Time deadline,
               std::shared_ptr<Cancellation> cancellation, Callback done) override;

  // Waiting counts the callers waiting for a future slot (all keys).
  size_t Waiting() const;

 private:
  struct Window;
  // ... implementation's choice ...
};

}  // namespace defender

#endif  // DEFENDER_SERVER_RATE_LIMITER_H_
