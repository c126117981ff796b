// clock.h: the time source, injected wherever behaviour depends on time
// (token expiry, deadlines), so tests can be exact without sleeping.
//
//   Clock& clock = Clock::Real();
//   absl::Time now = clock.Now();
#ifndef DEFENDER_ADAPTERS_COMMON_CLOCK_H_
#define DEFENDER_ADAPTERS_COMMON_CLOCK_H_

#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace defender {

// Clock returns the current time. Implementations are thread-safe.
class Clock {
 public:
  virtual ~Clock() = default;
  virtual absl::Time Now() const = 0;

  // Clock::Real() is the process-wide wall clock.
  static Clock& Real();
};

// FakeClock is a manually advanced clock for tests.
class FakeClock final : public Clock {
 public:
  explicit FakeClock(absl::Time start = absl::FromUnixSeconds(1700000000)) : now_(start) {}
  absl::Time Now() const override {
    absl::MutexLock lock(&mu_);
    return now_;
  }
  void Advance(absl::Duration d) {
    absl::MutexLock lock(&mu_);
    now_ += d;
  }

 private:
  mutable absl::Mutex mu_;
  absl::Time now_ ABSL_GUARDED_BY(mu_);
};

}  // namespace defender

#endif  // DEFENDER_ADAPTERS_COMMON_CLOCK_H_
