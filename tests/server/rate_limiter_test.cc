#include "server/rate_limiter.h"

#include <malloc.h>

#include <algorithm>
#include <atomic>
#include <deque>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "adapters/common/cancellation.h"
#include "adapters/common/clock.h"
#include "adapters/common/error.h"
#include "adapters/common/scheduler.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace defender {
namespace {

using ::testing::HasSubstr;

constexpr char kKey[] = "contoso/StopAndQuarantineFile";

// Outcome is what one Acquire's callback saw.
struct Outcome {
  int calls = 0;
  absl::Status status = absl::UnknownError("not called");
  absl::Time at;  // the clock's time of the (last) call

  bool granted() const { return calls == 1 && status.ok(); }
  bool pending() const { return calls == 0; }
};

class SlidingWindowLimiterTest : public ::testing::Test {
 protected:
  // Record returns a callback filling `outcome`.
  RateLimiter::Callback Record(Outcome* outcome) {
    return [this, outcome](absl::Status status) {
      ++outcome->calls;
      outcome->status = std::move(status);
      outcome->at = clock_.Now();
    };
  }

  // AdvanceTo moves the clock to `when` and runs the timers due.
  void AdvanceTo(absl::Time when) {
    clock_.Advance(when - clock_.Now());
    scheduler_.RunDue();
  }

  // ExpectRateLimited checks a refusal: code, reason, metadata, RetryInfo.
  static void ExpectRateLimited(const Outcome& outcome, const std::string& key,
                                const std::string& window, int limit, absl::Duration retry) {
    EXPECT_EQ(outcome.calls, 1);
    EXPECT_EQ(outcome.status.code(), absl::StatusCode::kResourceExhausted) << outcome.status;
    EXPECT_EQ(ErrorReason(outcome.status), "RATE_LIMITED");
    std::optional<google::rpc::ErrorInfo> info = GetErrorInfo(outcome.status);
    ASSERT_TRUE(info.has_value());
    EXPECT_EQ(info->domain(), "defender-plugin");
    EXPECT_EQ(info->metadata().at("key"), key);
    EXPECT_EQ(info->metadata().at("window"), window);
    EXPECT_EQ(info->metadata().at("limit"), std::to_string(limit));
    EXPECT_EQ(GetRetryDelay(outcome.status), retry);
  }

  static void ExpectCancelled(const Outcome& outcome) {
    EXPECT_EQ(outcome.calls, 1);
    EXPECT_EQ(outcome.status.code(), absl::StatusCode::kCancelled) << outcome.status;
    EXPECT_EQ(ErrorReason(outcome.status), "CANCELLED");
  }

  FakeClock clock_;
  ManualScheduler scheduler_{clock_};
  const absl::Time start_ = clock_.Now();
};

TEST_F(SlidingWindowLimiterTest, BurstOverTheMinuteBudgetGetsExactlyTheBudget) {
  SlidingWindowLimiter limiter({.per_minute = 100, .per_hour = 1500}, scheduler_, clock_);
  // 100 slots taken over 30 s (one each 300 ms), each granted inside Acquire.
  for (int i = 0; i < 100; ++i) {
    Outcome outcome;
    limiter.Acquire(kKey, clock_.Now(), nullptr, Record(&outcome));
    ASSERT_TRUE(outcome.granted()) << i << ": " << outcome.status;
    clock_.Advance(absl::Milliseconds(300));
  }
  // Then a burst at start + 30 s: every one refused at once, none waiting.
  ASSERT_EQ(clock_.Now(), start_ + absl::Seconds(30));
  std::vector<Outcome> burst(50);
  for (Outcome& outcome : burst) limiter.Acquire(kKey, clock_.Now(), nullptr, Record(&outcome));
  for (const Outcome& outcome : burst) {
    // The oldest slot (start) leaves the minute window at start + 60 s.
    ExpectRateLimited(outcome, kKey, "minute", 100, absl::Seconds(30));
  }
  EXPECT_EQ(limiter.Waiting(), 0u);
  EXPECT_EQ(scheduler_.Pending(), 0u);

  const std::string message(burst[0].status.message());
  EXPECT_THAT(message, HasSubstr(kKey));
  EXPECT_THAT(message, HasSubstr("100 requests a minute"));
  EXPECT_THAT(message, HasSubstr("30s"));
  EXPECT_THAT(message, HasSubstr("Defender documents 100 calls a minute and 1,500 an hour"));
  EXPECT_THAT(message, HasSubstr("DEFENDER_RATE_PER_MINUTE"));
  EXPECT_THAT(message, HasSubstr("DEFENDER_RATE_PER_HOUR"));

  // Each refusal says when the next slot frees: 300 ms later, the next one.
  clock_.Advance(absl::Seconds(30) - absl::Nanoseconds(1));
  Outcome almost;
  limiter.Acquire(kKey, clock_.Now(), nullptr, Record(&almost));
  ExpectRateLimited(almost, kKey, "minute", 100, absl::Nanoseconds(1));
  clock_.Advance(absl::Nanoseconds(1));
  Outcome freed, next;
  limiter.Acquire(kKey, clock_.Now(), nullptr, Record(&freed));
  limiter.Acquire(kKey, clock_.Now(), nullptr, Record(&next));
  EXPECT_TRUE(freed.granted()) << freed.status;
  ExpectRateLimited(next, kKey, "minute", 100, absl::Milliseconds(300));
}

TEST_F(SlidingWindowLimiterTest, WaitersGetTheirSlotsExactlyAtTheWindowBoundary) {
  SlidingWindowLimiter limiter({.per_minute = 2, .per_hour = 0}, scheduler_, clock_);
  Outcome first, second;
  limiter.Acquire(kKey, clock_.Now(), nullptr, Record(&first));
  clock_.Advance(absl::Seconds(10));
  limiter.Acquire(kKey, clock_.Now(), nullptr, Record(&second));
  ASSERT_TRUE(first.granted() && second.granted());

  clock_.Advance(absl::Seconds(10));  // start + 20 s
  const absl::Time deadline = start_ + absl::Seconds(200);
  std::vector<Outcome> waiters(3);
  for (Outcome& waiter : waiters) limiter.Acquire(kKey, deadline, nullptr, Record(&waiter));
  EXPECT_EQ(limiter.Waiting(), 3u);
  for (const Outcome& waiter : waiters) EXPECT_TRUE(waiter.pending());
  EXPECT_EQ(scheduler_.NextTime(), start_ + absl::Seconds(60));

  AdvanceTo(start_ + absl::Seconds(60) - absl::Nanoseconds(1));
  EXPECT_TRUE(waiters[0].pending());
  AdvanceTo(start_ + absl::Seconds(60));  // the slot of `first` leaves the window
  EXPECT_TRUE(waiters[0].granted());
  EXPECT_EQ(waiters[0].at, start_ + absl::Seconds(60));
  EXPECT_TRUE(waiters[1].pending());

  AdvanceTo(start_ + absl::Seconds(70));  // the slot of `second` leaves
  EXPECT_TRUE(waiters[1].granted());
  EXPECT_EQ(waiters[1].at, start_ + absl::Seconds(70));
  EXPECT_TRUE(waiters[2].pending());

  AdvanceTo(start_ + absl::Seconds(120));  // the first waiter's slot leaves
  EXPECT_TRUE(waiters[2].granted());
  EXPECT_EQ(waiters[2].at, start_ + absl::Seconds(120));
  EXPECT_EQ(limiter.Waiting(), 0u);
  EXPECT_EQ(scheduler_.Pending(), 0u);
}

TEST_F(SlidingWindowLimiterTest, ADeadlineBeforeTheSlotIsRefusedAndTakesNothing) {
  SlidingWindowLimiter limiter({.per_minute = 1, .per_hour = 0}, scheduler_, clock_);
  Outcome first, hurried, patient;
  limiter.Acquire(kKey, clock_.Now(), nullptr, Record(&first));
  ASSERT_TRUE(first.granted());

  limiter.Acquire(kKey, start_ + absl::Seconds(59), nullptr, Record(&hurried));
  ExpectRateLimited(hurried, kKey, "minute", 1, absl::Seconds(60));

  // The refusal reserved nothing: the next caller gets start + 60 s.
  limiter.Acquire(kKey, start_ + absl::Seconds(60), nullptr, Record(&patient));
  EXPECT_TRUE(patient.pending());
  AdvanceTo(start_ + absl::Seconds(60));
  EXPECT_TRUE(patient.granted());
}

TEST_F(SlidingWindowLimiterTest, AFreeSlotIsGrantedEvenPastTheDeadline) {
  SlidingWindowLimiter limiter({.per_minute = 1, .per_hour = 0}, scheduler_, clock_);
  Outcome late, refused;
  limiter.Acquire(kKey, start_ - absl::Seconds(1), nullptr, Record(&late));
  EXPECT_TRUE(late.granted());
  // ... and that slot was taken.
  limiter.Acquire(kKey, clock_.Now(), nullptr, Record(&refused));
  ExpectRateLimited(refused, kKey, "minute", 1, absl::Minutes(1));
}

TEST_F(SlidingWindowLimiterTest, TheHourWindowBindsAfterTheMinuteWindowResets) {
  SlidingWindowLimiter limiter({.per_minute = 2, .per_hour = 3}, scheduler_, clock_);
  std::vector<Outcome> now(3);
  for (Outcome& outcome : now)
    limiter.Acquire(kKey, start_ + absl::Minutes(2), nullptr, Record(&outcome));
  EXPECT_TRUE(now[0].granted());
  EXPECT_TRUE(now[1].granted());
  EXPECT_TRUE(now[2].pending());  // the minute window is full
  AdvanceTo(start_ + absl::Seconds(60));
  EXPECT_TRUE(now[2].granted());

  // The minute window has room again (one slot in it), the hour has none.
  AdvanceTo(start_ + absl::Seconds(61));
  Outcome refused;
  limiter.Acquire(kKey, clock_.Now(), nullptr, Record(&refused));
  ExpectRateLimited(refused, kKey, "hour", 3, absl::Hours(1) - absl::Seconds(61));
  EXPECT_THAT(std::string(refused.status.message()), HasSubstr("3 requests an hour"));

  // A caller that can wait gets the hour boundary, when the first two leave.
  Outcome waiter1, waiter2, waiter3;
  limiter.Acquire(kKey, absl::InfiniteFuture(), nullptr, Record(&waiter1));
  limiter.Acquire(kKey, absl::InfiniteFuture(), nullptr, Record(&waiter2));
  limiter.Acquire(kKey, absl::InfiniteFuture(), nullptr, Record(&waiter3));
  EXPECT_EQ(limiter.Waiting(), 3u);
  AdvanceTo(start_ + absl::Hours(1));
  EXPECT_TRUE(waiter1.granted());
  EXPECT_TRUE(waiter2.granted());  // two at start left; the minute allows two
  EXPECT_TRUE(waiter3.pending());
  // The third: the hour holds start + 60 s and two at start + 1 h, so the
  // hour frees at start + 1 h + 60 s.
  AdvanceTo(start_ + absl::Hours(1) + absl::Seconds(60));
  EXPECT_TRUE(waiter3.granted());
  EXPECT_EQ(waiter3.at, start_ + absl::Hours(1) + absl::Seconds(60));
}

TEST_F(SlidingWindowLimiterTest, ZeroTurnsAWindowOff) {
  {
    SlidingWindowLimiter hour_only({.per_minute = 0, .per_hour = 3}, scheduler_, clock_);
    std::vector<Outcome> outcomes(4);
    for (Outcome& outcome : outcomes)
      hour_only.Acquire(kKey, clock_.Now(), nullptr, Record(&outcome));
    EXPECT_TRUE(outcomes[0].granted() && outcomes[1].granted() && outcomes[2].granted());
    ExpectRateLimited(outcomes[3], kKey, "hour", 3, absl::Hours(1));
  }
  {
    SlidingWindowLimiter minute_only({.per_minute = 2, .per_hour = 0}, scheduler_, clock_);
    int granted = 0;
    for (int minute = 0; minute < 120; ++minute) {  // 2 hours: no hour budget
      for (int i = 0; i < 3; ++i) {
        Outcome outcome;
        minute_only.Acquire(kKey, clock_.Now(), nullptr, Record(&outcome));
        granted += outcome.granted();
      }
      clock_.Advance(absl::Minutes(1));
    }
    EXPECT_EQ(granted, 240);
  }
  {
    SlidingWindowLimiter unlimited({.per_minute = 0, .per_hour = 0}, scheduler_, clock_);
    int granted = 0;
    for (int i = 0; i < 10000; ++i) {
      Outcome outcome;
      unlimited.Acquire(kKey, clock_.Now(), nullptr, Record(&outcome));
      granted += outcome.granted();
    }
    EXPECT_EQ(granted, 10000);
    EXPECT_EQ(scheduler_.Pending(), 0u);
  }
}

TEST_F(SlidingWindowLimiterTest, KeysAreIndependent) {
  SlidingWindowLimiter limiter({.per_minute = 1, .per_hour = 0}, scheduler_, clock_);
  Outcome a1, b1, a2, b2;
  limiter.Acquire("tenant-a/StopAndQuarantineFile", clock_.Now(), nullptr, Record(&a1));
  limiter.Acquire("tenant-b/StopAndQuarantineFile", clock_.Now(), nullptr, Record(&b1));
  limiter.Acquire("tenant-a/GetMachineAction", clock_.Now(), nullptr, Record(&b2));
  limiter.Acquire("tenant-a/StopAndQuarantineFile", clock_.Now(), nullptr, Record(&a2));
  EXPECT_TRUE(a1.granted());
  EXPECT_TRUE(b1.granted());
  EXPECT_TRUE(b2.granted());
  ExpectRateLimited(a2, "tenant-a/StopAndQuarantineFile", "minute", 1, absl::Minutes(1));
}

TEST_F(SlidingWindowLimiterTest, CancellingAWaiterGivesItsSlotToTheNextCallerAndCallsOnce) {
  SlidingWindowLimiter limiter({.per_minute = 1, .per_hour = 0}, scheduler_, clock_);
  Outcome first, cancelled, next;
  limiter.Acquire(kKey, clock_.Now(), nullptr, Record(&first));
  auto cancellation = std::make_shared<Cancellation>();
  limiter.Acquire(kKey, start_ + absl::Minutes(5), cancellation, Record(&cancelled));
  EXPECT_EQ(limiter.Waiting(), 1u);
  EXPECT_EQ(scheduler_.Pending(), 1u);

  cancellation->Cancel();
  ExpectCancelled(cancelled);
  EXPECT_THAT(std::string(cancelled.status.message()), HasSubstr(kKey));
  EXPECT_EQ(GetErrorInfo(cancelled.status)->metadata().at("key"), kKey);
  EXPECT_EQ(limiter.Waiting(), 0u);
  EXPECT_EQ(scheduler_.Pending(), 0u);  // its timer is gone

  // start + 60 s is free again: a caller whose deadline is exactly that gets it.
  auto unused = std::make_shared<Cancellation>();
  limiter.Acquire(kKey, start_ + absl::Seconds(60), unused, Record(&next));
  EXPECT_TRUE(next.pending());
  EXPECT_EQ(scheduler_.NextTime(), start_ + absl::Seconds(60));
  AdvanceTo(start_ + absl::Seconds(60));
  EXPECT_TRUE(next.granted());
  EXPECT_EQ(next.at, start_ + absl::Seconds(60));

  // Later cancellations change nothing: the callbacks were called once.
  cancellation->Cancel();
  unused->Cancel();
  EXPECT_EQ(cancelled.calls, 1);
  EXPECT_EQ(next.calls, 1);
  EXPECT_TRUE(next.status.ok());
}

TEST_F(SlidingWindowLimiterTest, AnAlreadyCancelledCallerGetsCancelledAndTakesNoSlot) {
  SlidingWindowLimiter limiter({.per_minute = 1, .per_hour = 0}, scheduler_, clock_);
  auto cancellation = std::make_shared<Cancellation>();
  cancellation->Cancel();
  Outcome cancelled, after;
  limiter.Acquire(kKey, clock_.Now(), cancellation, Record(&cancelled));
  ExpectCancelled(cancelled);
  limiter.Acquire(kKey, clock_.Now(), nullptr, Record(&after));
  EXPECT_TRUE(after.granted());
}

TEST_F(SlidingWindowLimiterTest, CallbacksMayAcquireAgain) {
  SlidingWindowLimiter limiter({.per_minute = 1, .per_hour = 0}, scheduler_, clock_);
  Outcome first, second, third;
  limiter.Acquire(kKey, clock_.Now(), nullptr, [&](absl::Status status) {
    Record (&first)(status);
    limiter.Acquire(kKey, absl::InfiniteFuture(), nullptr, [&](absl::Status status) {
      Record (&second)(status);
      limiter.Acquire(kKey, clock_.Now(), nullptr, Record(&third));
    });
  });
  EXPECT_TRUE(first.granted());
  EXPECT_TRUE(second.pending());
  AdvanceTo(start_ + absl::Minutes(1));
  EXPECT_TRUE(second.granted());
  ExpectRateLimited(third, kKey, "minute", 1, absl::Minutes(1));
}

TEST_F(SlidingWindowLimiterTest, DestructionCompletesWaitersWithCancelled) {
  std::vector<Outcome> waiters(3);
  auto cancellation = std::make_shared<Cancellation>();
  {
    SlidingWindowLimiter limiter({.per_minute = 1, .per_hour = 0}, scheduler_, clock_);
    Outcome first;
    limiter.Acquire(kKey, clock_.Now(), nullptr, Record(&first));
    for (Outcome& waiter : waiters) {
      limiter.Acquire(kKey, absl::InfiniteFuture(), cancellation, Record(&waiter));
    }
    EXPECT_EQ(limiter.Waiting(), 3u);
  }
  for (const Outcome& waiter : waiters) ExpectCancelled(waiter);
  EXPECT_EQ(scheduler_.Pending(), 0u);
  cancellation->Cancel();  // after the limiter: nothing happens
  AdvanceTo(start_ + absl::Hours(2));
  for (const Outcome& waiter : waiters) EXPECT_EQ(waiter.calls, 1);
}

TEST_F(SlidingWindowLimiterTest, TenThousandWaitersAreCheapAndGrantedInOrder) {
  constexpr int kWaiters = 10000;
  SlidingWindowLimiter limiter({.per_minute = 100, .per_hour = 0}, scheduler_, clock_);
  for (int i = 0; i < 100; ++i) {
    Outcome outcome;
    limiter.Acquire(kKey, clock_.Now(), nullptr, Record(&outcome));
    ASSERT_TRUE(outcome.granted());
  }
  std::vector<std::shared_ptr<Cancellation>> cancellations(kWaiters);
  for (auto& cancellation : cancellations) cancellation = std::make_shared<Cancellation>();
  std::vector<int> order;
  std::vector<absl::Time> times;
  order.reserve(kWaiters);
  times.reserve(kWaiters);

  const size_t heap_before = mallinfo2().uordblks;
  for (int i = 0; i < kWaiters; ++i) {
    limiter.Acquire(kKey, absl::InfiniteFuture(), cancellations[i], [&, i](absl::Status status) {
      ASSERT_TRUE(status.ok()) << status;
      order.push_back(i);
      times.push_back(clock_.Now());
    });
  }
  const size_t heap_after = mallinfo2().uordblks;
  EXPECT_EQ(limiter.Waiting(), static_cast<size_t>(kWaiters));
  EXPECT_EQ(scheduler_.Pending(), static_cast<size_t>(kWaiters));
// ASan and TSan own malloc (mallinfo2 sees nothing). gcc says so with
// __SANITIZE_*__, clang 14 only through __has_feature.
#if defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define DEFENDER_SANITIZER_MALLOC 1
#endif
#endif
#if !defined(__SANITIZE_ADDRESS__) && !defined(__SANITIZE_THREAD__) && \
    !defined(DEFENDER_SANITIZER_MALLOC)
  // Its entry, its timer, its cancellation callback, its slot, and this
  // test's callback (48 bytes): about 560 bytes on glibc.
  ASSERT_GT(heap_after, heap_before);
  const size_t per_waiter = (heap_after - heap_before) / kWaiters;
  EXPECT_LT(per_waiter, 700u);
  RecordProperty("heap_bytes_per_waiter", static_cast<int>(per_waiter));
#endif

  while (scheduler_.NextTime() != absl::InfiniteFuture()) AdvanceTo(scheduler_.NextTime());
  ASSERT_EQ(order.size(), static_cast<size_t>(kWaiters));
  for (int i = 0; i < kWaiters; ++i) {
    ASSERT_EQ(order[i], i);
    // 100 a minute: waiter i in minute i / 100 + 1.
    ASSERT_EQ(times[i], start_ + absl::Minutes(i / 100 + 1)) << i;
  }
  EXPECT_EQ(limiter.Waiting(), 0u);
}

TEST_F(SlidingWindowLimiterTest, ALateTimerRecordsWhenTheSlotWasReallyUsed) {
  SlidingWindowLimiter limiter({.per_minute = 1, .per_hour = 0}, scheduler_, clock_);
  Outcome first, late, next;
  limiter.Acquire(kKey, clock_.Now(), nullptr, Record(&first));
  limiter.Acquire(kKey, absl::InfiniteFuture(), nullptr, Record(&late));  // slot: start + 60 s
  AdvanceTo(start_ + absl::Seconds(90));  // its timer fires 30 s late
  EXPECT_TRUE(late.granted());
  // The request went out at start + 90 s: the next slot is a minute after that.
  limiter.Acquire(kKey, clock_.Now(), nullptr, Record(&next));
  ExpectRateLimited(next, kKey, "minute", 1, absl::Seconds(60));
}

// Whatever the mix of callers, deadlines, cancellations and clock steps, no
// window ever holds more grants than its limit, and every caller is answered
// once. (A fixed seed: the same sequence every run.)
TEST_F(SlidingWindowLimiterTest, NoWindowEverExceedsItsLimit) {
  constexpr int kPerMinute = 3;
  constexpr int kPerHour = 40;
  SlidingWindowLimiter limiter({.per_minute = kPerMinute, .per_hour = kPerHour}, scheduler_,
                               clock_);
  std::mt19937 random(20240601);
  auto uniform = [&](int n) { return static_cast<int>(random() % n); };
  std::deque<Outcome> outcomes;  // stable addresses
  std::vector<std::shared_ptr<Cancellation>> cancellations;
  std::vector<absl::Time> grants;
  for (int step = 0; step < 3000; ++step) {
    switch (uniform(4)) {
      case 0: {  // a caller that may wait up to 30 minutes
        auto cancellation = std::make_shared<Cancellation>();
        cancellations.push_back(cancellation);
        Outcome* outcome = &outcomes.emplace_back();
        limiter.Acquire(kKey, clock_.Now() + absl::Seconds(uniform(1800)), cancellation,
                        [&, outcome](absl::Status status) {
                          Record(outcome)(status);
                          if (status.ok()) grants.push_back(clock_.Now());
                        });
        break;
      }
      case 1:  // one of them gives up
        if (!cancellations.empty()) cancellations[uniform(cancellations.size())]->Cancel();
        break;
      case 2: {  // time passes; timers fire on time
        absl::Time until = clock_.Now() + absl::Seconds(uniform(60));
        while (scheduler_.NextTime() <= until) AdvanceTo(scheduler_.NextTime());
        AdvanceTo(until);
        break;
      }
      default: {  // a caller that cannot wait
        Outcome* outcome = &outcomes.emplace_back();
        limiter.Acquire(kKey, clock_.Now(), nullptr, [&, outcome](absl::Status status) {
          Record(outcome)(status);
          if (status.ok()) grants.push_back(clock_.Now());
        });
      }
    }
  }
  while (scheduler_.NextTime() != absl::InfiniteFuture()) AdvanceTo(scheduler_.NextTime());
  EXPECT_EQ(limiter.Waiting(), 0u);
  for (const Outcome& outcome : outcomes) ASSERT_EQ(outcome.calls, 1);

  ASSERT_GT(grants.size(), 100u);
  std::sort(grants.begin(), grants.end());
  for (size_t i = 0; i < grants.size(); ++i) {
    auto within = [&](absl::Duration window) {
      return std::lower_bound(grants.begin(), grants.end(), grants[i] + window) -
             (grants.begin() + i);
    };
    ASSERT_LE(within(absl::Minutes(1)), kPerMinute) << "minute from grant " << i;
    ASSERT_LE(within(absl::Hours(1)), kPerHour) << "hour from grant " << i;
  }
}

// Timers fire on a TimerThread while other threads raise the cancellations:
// every caller gets exactly one callback, OK or CANCELLED.
TEST(SlidingWindowLimiterRaceTest, CancellationRacingWithTheTimerCallsBackOnce) {
  constexpr int kRounds = 20;
  constexpr int kWaiters = 500;
  constexpr int kCancellers = 2;
  for (int round = 0; round < kRounds; ++round) {
    // The limiter's clock runs a minute (less a little) behind the wall clock
    // the TimerThread uses, so the waiters' slots (its start + 1 minute) fall
    // due now, while they are being cancelled.
    FakeClock clock(absl::Now() - absl::Minutes(1) + absl::Microseconds(round * 100));
    struct Calls {
      absl::Mutex mu;
      std::vector<int> calls ABSL_GUARDED_BY(mu) = std::vector<int>(kWaiters);
      int total ABSL_GUARDED_BY(mu) = 0;
      int ok ABSL_GUARDED_BY(mu) = 0;
    } calls;
    std::vector<std::shared_ptr<Cancellation>> cancellations(kWaiters);
    for (auto& cancellation : cancellations) cancellation = std::make_shared<Cancellation>();
    {
      TimerThread timers;
      SlidingWindowLimiter limiter({.per_minute = kWaiters, .per_hour = 0}, timers, clock);
      std::atomic<int> granted_at_once{0};
      for (int i = 0; i < kWaiters; ++i) {
        limiter.Acquire(kKey, clock.Now(), nullptr,
                        [&](absl::Status status) { granted_at_once += status.ok(); });
      }
      ASSERT_EQ(granted_at_once, kWaiters);

      std::vector<std::thread> cancellers;
      absl::Notification go;
      for (int t = 0; t < kCancellers; ++t) {
        cancellers.emplace_back([&, t] {
          go.WaitForNotification();
          for (int i = t; i < kWaiters; i += kCancellers) cancellations[i]->Cancel();
        });
      }
      for (int i = 0; i < kWaiters; ++i) {
        if (i == kWaiters / 4) go.Notify();  // cancel while some are still being added
        limiter.Acquire(
            kKey, absl::InfiniteFuture(), cancellations[i], [&, i](absl::Status status) {
              ASSERT_TRUE(status.ok() || status.code() == absl::StatusCode::kCancelled) << status;
              absl::MutexLock lock(&calls.mu);
              ++calls.calls[i];
              ++calls.total;
              calls.ok += status.ok();
            });
      }
      for (std::thread& canceller : cancellers) canceller.join();
      {
        absl::MutexLock lock(&calls.mu);
        auto all_called = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(calls.mu) {
          return calls.total >= kWaiters;
        };
        ASSERT_TRUE(calls.mu.AwaitWithTimeout(absl::Condition(&all_called), absl::Seconds(30)))
            << "round " << round;
      }
      EXPECT_EQ(limiter.Waiting(), 0u);
    }  // the limiter, then the timer thread: nothing in flight any more
    absl::MutexLock lock(&calls.mu);
    EXPECT_EQ(calls.total, kWaiters) << "round " << round;
    for (int i = 0; i < kWaiters; ++i)
      ASSERT_EQ(calls.calls[i], 1) << "round " << round << " waiter " << i;
  }
}

}  // namespace
}  // namespace defender
