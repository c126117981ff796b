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
//   limiter.Acquire("contoso/StopAndQuarantineFile", deadline, cancellation,
//                   [](absl::Status slot) { ... });
//
// Exactness: a slot at time s counts in every window [a, a + W) holding s.
// With a limit of L per W, a burst of N > L requests whose deadline is now
// gets exactly L slots; the next waiter gets the instant the L-th most recent
// slot leaves the window (s + W), not a second later.
#ifndef DEFENDER_SERVER_RATE_LIMITER_H_
#define DEFENDER_SERVER_RATE_LIMITER_H_

#include <cstddef>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "adapters/common/cancellation.h"
#include "adapters/common/clock.h"
#include "adapters/common/rate_limiter.h"
#include "adapters/common/scheduler.h"

namespace defender {

// RateLimits are the windows' sizes; 0 (or less) turns a window off. Both off:
// every slot is granted at once.
struct RateLimits {
  int per_minute = 100;
  int per_hour = 1500;
};

// SlidingWindowLimiter is a RateLimiter for one process. Thread-safe.
//
// Acquire, for `key` (a tenant and an API, never a secret: it appears in
// errors):
//  - a free slot now: takes it and calls `done(OK)` before returning;
//  - the earliest slot after `deadline`: takes nothing and calls `done` before
//    returning with RESOURCE_EXHAUSTED, reason RATE_LIMITED, ErrorInfo metadata
//    {key, window ("minute" or "hour", the one that binds), limit} and a
//    RetryInfo with the time until that slot;
//  - else: reserves that slot and calls `done(OK)` at its time from a
//    `scheduler` timer, or `done(CANCELLED)` (reason CANCELLED) from the thread
//    that raises `cancellation`, whichever comes first, exactly once. A
//    cancelled reservation is given back: the next caller gets it unless a
//    later slot was reserved meanwhile; then that gap stays unused (a window
//    never exceeds its limit, but may fall short of it). Waiters keep the
//    slots they reserved. A timer that fires late delivers its slot late:
//    the log then records the later time for the decisions that follow;
//    reservations made before keep their times, so they may sit up to that
//    lateness too close to it.
// A `cancellation` already raised gets CANCELLED at once, and takes no slot.
// `done` is never called with a lock held, and must not block: it may run on
// the scheduler's thread.
//
// Memory: per key, 16 bytes per slot of the last hour (or minute) and every
// reserved slot; per waiting caller, about 500 bytes (its entry, its timer,
// its cancellation callback) plus what `done` captures. Idle keys are pruned.
//
// `scheduler` and `clock` must outlive the limiter. Destroying the limiter
// completes every waiting caller with CANCELLED (reason CANCELLED), on the
// destroying thread; timers or cancellations racing with it do nothing.
class SlidingWindowLimiter final : public RateLimiter {
 public:
  SlidingWindowLimiter(RateLimits limits, Scheduler& scheduler, Clock& clock = Clock::Real());
  ~SlidingWindowLimiter() override;

  SlidingWindowLimiter(const SlidingWindowLimiter&) = delete;
  SlidingWindowLimiter& operator=(const SlidingWindowLimiter&) = delete;

  void Acquire(const std::string& key, absl::Time deadline,
               std::shared_ptr<Cancellation> cancellation, Callback done) override;

  // Waiting counts the callers waiting for a future slot (all keys).
  size_t Waiting() const;

 private:
  // Core is the state timers and cancellation callbacks share with the
  // limiter: they hold it weakly, so one that outlives the limiter finds it
  // gone (or emptied) and does nothing.
  struct Core;
  std::shared_ptr<Core> core_;
};

// The errors this limiter and SharedRateLimiter (server/shared_budget.h)
// complete callers with, for `key`: CANCELLED (reason CANCELLED) when the
// caller's cancellation is raised, or when the limiter is destroyed; and
// RESOURCE_EXHAUSTED (reason RATE_LIMITED, metadata key, window, limit, a
// RetryInfo of `delay`) when `window` ("minute" or "hour") has no slot before
// the deadline.
absl::Status RateSlotCancelledError(const std::string& key);
absl::Status RateSlotShutdownError(const std::string& key);
absl::Status RateLimitedError(const std::string& key, absl::string_view window,
                              absl::Duration delay, const RateLimits& limits);

}  // namespace defender

#endif  // DEFENDER_SERVER_RATE_LIMITER_H_
