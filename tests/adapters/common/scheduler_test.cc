#include "adapters/common/scheduler.h"

#include <atomic>
#include <memory>
#include <thread>
#include <utility>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "adapters/common/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace defender {
namespace {

using ::testing::ElementsAre;

// Generous bound for what a TimerThread does "promptly".
constexpr absl::Duration kPatience = absl::Seconds(30);

// Recorder collects what tasks did, from any thread.
class Recorder {
 public:
  void Add(int value) {
    absl::MutexLock lock(&mu_);
    values_.push_back(value);
  }
  std::vector<int> values() const {
    absl::MutexLock lock(&mu_);
    return values_;
  }
  // WaitFor waits until `n` values are in (false after kPatience).
  bool WaitFor(size_t n) const {
    absl::MutexLock lock(&mu_);
    auto enough = [this, n]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return values_.size() >= n; };
    return mu_.AwaitWithTimeout(absl::Condition(&enough), kPatience);
  }

 private:
  mutable absl::Mutex mu_;
  std::vector<int> values_ ABSL_GUARDED_BY(mu_);
};

// Sentinel reports its own destruction, to see that a task was dropped.
struct Sentinel {
  explicit Sentinel(std::atomic<int>* destroyed) : destroyed(destroyed) {}
  Sentinel(Sentinel&& other) : destroyed(std::exchange(other.destroyed, nullptr)) {}
  ~Sentinel() {
    if (destroyed != nullptr) ++*destroyed;
  }
  std::atomic<int>* destroyed;
};

// ---- ManualScheduler: the deterministic one -------------------------------

class ManualSchedulerTest : public ::testing::Test {
 protected:
  FakeClock clock_;
  ManualScheduler scheduler_{clock_};
  absl::Time start_ = clock_.Now();
};

TEST_F(ManualSchedulerTest, RunsDueTasksInTimeOrder) {
  std::vector<int> ran;
  scheduler_.RunAt(start_ + absl::Seconds(3), [&] { ran.push_back(3); });
  scheduler_.RunAt(start_ + absl::Seconds(1), [&] { ran.push_back(1); });
  scheduler_.RunAt(start_ + absl::Seconds(2), [&] { ran.push_back(2); });
  EXPECT_EQ(scheduler_.NextTime(), start_ + absl::Seconds(1));

  EXPECT_EQ(scheduler_.RunDue(), 0);  // none due yet
  clock_.Advance(absl::Seconds(2));
  EXPECT_EQ(scheduler_.RunDue(), 2);
  EXPECT_THAT(ran, ElementsAre(1, 2));
  EXPECT_EQ(scheduler_.Pending(), 1u);
  EXPECT_EQ(scheduler_.NextTime(), start_ + absl::Seconds(3));

  clock_.Advance(absl::Seconds(1));
  EXPECT_EQ(scheduler_.RunDue(), 1);
  EXPECT_THAT(ran, ElementsAre(1, 2, 3));
  EXPECT_EQ(scheduler_.NextTime(), absl::InfiniteFuture());
}

TEST_F(ManualSchedulerTest, SameTimeTasksRunInScheduleOrder) {
  std::vector<int> ran;
  for (int i = 0; i < 5; ++i) scheduler_.RunAt(start_, [&ran, i] { ran.push_back(i); });
  EXPECT_EQ(scheduler_.RunDue(), 5);
  EXPECT_THAT(ran, ElementsAre(0, 1, 2, 3, 4));
}

TEST_F(ManualSchedulerTest, RunAtNeverRunsTheTaskItselfAndIdsAreNonZero) {
  bool ran = false;
  Scheduler::TaskId id = scheduler_.RunAt(start_ - absl::Hours(1), [&] { ran = true; });
  EXPECT_NE(id, 0u);
  EXPECT_FALSE(ran);
  EXPECT_EQ(scheduler_.RunDue(), 1);  // a past time is due at once
  EXPECT_TRUE(ran);
}

TEST_F(ManualSchedulerTest, CancelBeforeRunDropsTheTask) {
  std::atomic<int> destroyed{0};
  bool ran = false;
  Scheduler::TaskId id =
      scheduler_.RunAt(start_, [&, sentinel = Sentinel(&destroyed)] { ran = true; });
  EXPECT_TRUE(scheduler_.Cancel(id));
  EXPECT_EQ(destroyed, 1);
  EXPECT_FALSE(scheduler_.Cancel(id));  // already gone
  EXPECT_EQ(scheduler_.RunDue(), 0);
  EXPECT_FALSE(ran);
  EXPECT_EQ(scheduler_.Pending(), 0u);
}

TEST_F(ManualSchedulerTest, CancelAfterRunOrOfUnknownIdReturnsFalse) {
  Scheduler::TaskId id = scheduler_.RunAt(start_, [] {});
  EXPECT_EQ(scheduler_.RunDue(), 1);
  EXPECT_FALSE(scheduler_.Cancel(id));
  EXPECT_FALSE(scheduler_.Cancel(0));
  EXPECT_FALSE(scheduler_.Cancel(12345));
}

TEST_F(ManualSchedulerTest, TasksMayScheduleAndCancelReentrantly) {
  std::vector<int> ran;
  Scheduler::TaskId doomed = scheduler_.RunAt(start_ + absl::Seconds(1), [&] { ran.push_back(9); });
  scheduler_.RunAt(start_, [&] {
    ran.push_back(1);
    EXPECT_TRUE(scheduler_.Cancel(doomed));
    scheduler_.RunAt(start_, [&] { ran.push_back(2); });                     // due now: this RunDue
    scheduler_.RunAt(start_ + absl::Seconds(5), [&] { ran.push_back(3); });  // later
  });
  EXPECT_EQ(scheduler_.RunDue(), 2);
  EXPECT_THAT(ran, ElementsAre(1, 2));
  clock_.Advance(absl::Seconds(5));
  EXPECT_EQ(scheduler_.RunDue(), 1);
  EXPECT_THAT(ran, ElementsAre(1, 2, 3));
}

TEST_F(ManualSchedulerTest, DestructorDropsPendingTasksWithoutRunningThem) {
  std::atomic<int> destroyed{0};
  bool ran = false;
  {
    ManualScheduler scheduler(clock_);
    scheduler.RunAt(start_, [&, sentinel = Sentinel(&destroyed)] { ran = true; });
  }
  EXPECT_FALSE(ran);
  EXPECT_EQ(destroyed, 1);
}

TEST_F(ManualSchedulerTest, TenThousandTimersFireOnceEachInOrder) {
  constexpr int kTimers = 10000;
  std::vector<int> ran;
  ran.reserve(kTimers);
  // Scheduled out of order: times interleave (i % 100 seconds).
  for (int i = 0; i < kTimers; ++i) {
    scheduler_.RunAt(start_ + absl::Seconds(i % 100), [&ran, i] { ran.push_back(i); });
  }
  EXPECT_EQ(scheduler_.Pending(), static_cast<size_t>(kTimers));
  clock_.Advance(absl::Seconds(99));
  EXPECT_EQ(scheduler_.RunDue(), kTimers);
  ASSERT_EQ(ran.size(), static_cast<size_t>(kTimers));
  // Time order, then schedule order within a second.
  size_t next = 0;
  for (int second = 0; second < 100; ++second) {
    for (int i = second; i < kTimers; i += 100) EXPECT_EQ(ran[next++], i);
  }
  EXPECT_EQ(scheduler_.Pending(), 0u);
}

// ---- TimerThread: the production one, on the wall clock -------------------

// HoldThread keeps a TimerThread's thread busy in a task until Release(), so
// that tasks scheduled meanwhile are all queued before any runs. Its
// destructor waits until the task has left release_.WaitForNotification():
// a Notification must outlive every waiter, not only the Notify().
class HoldThread {
 public:
  explicit HoldThread(TimerThread& timers) {
    timers.RunAt(absl::InfinitePast(), [this] {
      entered_.Notify();
      release_.WaitForNotification();
      left_.Notify();
    });
    entered_.WaitForNotification();
  }
  ~HoldThread() {
    Release();
    left_.WaitForNotification();
  }
  void Release() {
    if (!release_.HasBeenNotified()) release_.Notify();
  }

 private:
  absl::Notification left_;
  absl::Notification entered_;
  absl::Notification release_;
};

TEST(TimerThreadTest, RunsTasksInTimeOrder) {
  TimerThread timers;
  Recorder ran;
  absl::Time now = absl::Now();
  {
    HoldThread hold(timers);
    timers.RunAt(now - absl::Seconds(1), [&] { ran.Add(3); });
    timers.RunAt(now - absl::Seconds(3), [&] { ran.Add(1); });
    timers.RunAt(now + absl::Milliseconds(20), [&] { ran.Add(4); });
    timers.RunAt(now - absl::Seconds(2), [&] { ran.Add(2); });
  }
  ASSERT_TRUE(ran.WaitFor(4));
  EXPECT_THAT(ran.values(), ElementsAre(1, 2, 3, 4));
  EXPECT_EQ(timers.Pending(), 0u);
}

TEST(TimerThreadTest, SameTimeTasksRunInScheduleOrder) {
  TimerThread timers;
  Recorder ran;
  absl::Time when = absl::Now();
  {
    HoldThread hold(timers);
    for (int i = 0; i < 5; ++i) timers.RunAt(when, [&ran, i] { ran.Add(i); });
  }
  ASSERT_TRUE(ran.WaitFor(5));
  EXPECT_THAT(ran.values(), ElementsAre(0, 1, 2, 3, 4));
}

TEST(TimerThreadTest, RunsOnItsOwnThreadNeverInsideRunAt) {
  TimerThread timers;
  absl::Notification ran;
  std::thread::id task_thread;
  timers.RunAt(absl::InfinitePast(), [&] {
    task_thread = std::this_thread::get_id();
    ran.Notify();
  });
  ASSERT_TRUE(ran.WaitForNotificationWithTimeout(kPatience));
  EXPECT_NE(task_thread, std::this_thread::get_id());
}

TEST(TimerThreadTest, PastTaskRunsPromptlyAlsoWhileALaterOneIsAwaited) {
  TimerThread timers;
  timers.RunAt(absl::Now() + absl::Hours(1), [] {});  // the thread sleeps until then
  absl::Notification ran;
  absl::Time start = absl::Now();
  timers.RunAt(start - absl::Hours(1), [&] { ran.Notify(); });
  ASSERT_TRUE(ran.WaitForNotificationWithTimeout(kPatience));
  EXPECT_LT(absl::Now() - start, kPatience);
  EXPECT_EQ(timers.Pending(), 1u);
}

TEST(TimerThreadTest, CancelBeforeRunDropsTheTask) {
  TimerThread timers;
  std::atomic<int> destroyed{0};
  std::atomic<bool> ran{false};
  Scheduler::TaskId id = timers.RunAt(absl::Now() + absl::Hours(1),
                                      [&, sentinel = Sentinel(&destroyed)] { ran = true; });
  EXPECT_NE(id, 0u);
  EXPECT_EQ(timers.Pending(), 1u);
  EXPECT_TRUE(timers.Cancel(id));
  EXPECT_EQ(destroyed, 1);
  EXPECT_FALSE(timers.Cancel(id));
  EXPECT_EQ(timers.Pending(), 0u);
  EXPECT_FALSE(ran);
}

TEST(TimerThreadTest, CancelOfARunningOrFinishedTaskReturnsFalse) {
  TimerThread timers;
  absl::Notification entered, release, finished;
  Scheduler::TaskId running = timers.RunAt(absl::InfinitePast(), [&] {
    entered.Notify();
    release.WaitForNotification();
  });
  ASSERT_TRUE(entered.WaitForNotificationWithTimeout(kPatience));
  EXPECT_FALSE(timers.Cancel(running));  // running
  release.Notify();

  Scheduler::TaskId done = timers.RunAt(absl::InfinitePast(), [&] { finished.Notify(); });
  ASSERT_TRUE(finished.WaitForNotificationWithTimeout(kPatience));
  EXPECT_FALSE(timers.Cancel(done));  // ran
  EXPECT_FALSE(timers.Cancel(0));
}

TEST(TimerThreadTest, TasksMayScheduleAndCancelReentrantly) {
  TimerThread timers;
  Recorder ran;
  Scheduler::TaskId doomed = timers.RunAt(absl::Now() + absl::Hours(1), [&] { ran.Add(9); });
  timers.RunAt(absl::InfinitePast(), [&] {
    ran.Add(1);
    if (!timers.Cancel(doomed)) ran.Add(-1);
    timers.RunAt(absl::InfinitePast(), [&] {
      ran.Add(2);
      timers.RunAt(absl::Now(), [&] { ran.Add(3); });
    });
  });
  ASSERT_TRUE(ran.WaitFor(3));
  EXPECT_THAT(ran.values(), ElementsAre(1, 2, 3));
  EXPECT_EQ(timers.Pending(), 0u);
}

TEST(TimerThreadTest, DestructorDropsPendingTasksWithoutRunningThem) {
  std::atomic<int> destroyed{0};
  std::atomic<int> ran{0};
  {
    TimerThread timers;
    for (int i = 0; i < 100; ++i) {
      timers.RunAt(absl::Now() + absl::Hours(1), [&, sentinel = Sentinel(&destroyed)] { ++ran; });
    }
  }
  EXPECT_EQ(ran, 0);
  EXPECT_EQ(destroyed, 100);
}

// A dropped task's captures are destroyed outside the lock: their destructor
// may call back into the scheduler being destroyed.
TEST(TimerThreadTest, DroppedTasksMayCallTheSchedulerWhenDestroyed) {
  struct CancelsOnDestruction {
    TimerThread* timers;
    Scheduler::TaskId other;
    std::atomic<int>* calls;
    CancelsOnDestruction(TimerThread* timers, Scheduler::TaskId other, std::atomic<int>* calls)
        : timers(timers), other(other), calls(calls) {}
    CancelsOnDestruction(CancelsOnDestruction&& from)
        : timers(std::exchange(from.timers, nullptr)), other(from.other), calls(from.calls) {}
    ~CancelsOnDestruction() {
      if (timers == nullptr) return;
      timers->Cancel(other);
      ++*calls;
    }
  };
  std::atomic<int> calls{0};
  {
    TimerThread timers;
    Scheduler::TaskId other = timers.RunAt(absl::Now() + absl::Hours(2), [] {});
    timers.RunAt(absl::Now() + absl::Hours(1),
                 [guard = CancelsOnDestruction(&timers, other, &calls)] {});
    // Also when cancelled.
    Scheduler::TaskId cancelled = timers.RunAt(
        absl::Now() + absl::Hours(1), [guard = CancelsOnDestruction(&timers, 999, &calls)] {});
    EXPECT_TRUE(timers.Cancel(cancelled));
    EXPECT_EQ(calls, 1);
  }
  EXPECT_EQ(calls, 2);
}

TEST(TimerThreadTest, TenThousandTimersFireOnceEach) {
  constexpr int kTimers = 10000;
  TimerThread timers;
  std::vector<std::atomic<int>> fired(kTimers);
  std::atomic<int> total{0};
  absl::Notification all;
  absl::Time now = absl::Now();
  for (int i = 0; i < kTimers; ++i) {
    // Spread over the past and the next 50 ms, out of order.
    absl::Time when = now + absl::Microseconds((i * 7919) % 100000 - 50000);
    timers.RunAt(when, [&, i] {
      ++fired[i];
      if (++total == kTimers) all.Notify();
    });
  }
  ASSERT_TRUE(all.WaitForNotificationWithTimeout(kPatience));
  for (int i = 0; i < kTimers; ++i) ASSERT_EQ(fired[i], 1) << "timer " << i;
  EXPECT_EQ(timers.Pending(), 0u);
}

TEST(TimerThreadTest, RunAtAndCancelFromManyThreads) {
  constexpr int kThreads = 4;
  constexpr int kPerThread = 500;
  TimerThread timers;
  Recorder ran;
  std::atomic<int> cancelled{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < kPerThread; ++i) {
        Scheduler::TaskId id = timers.RunAt(absl::Now(), [&] { ran.Add(0); });
        if (i % 2 == 0 && timers.Cancel(id)) ++cancelled;
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  // Every task either ran or was cancelled, never both.
  size_t expected_runs = kThreads * kPerThread - cancelled;
  ASSERT_TRUE(ran.WaitFor(expected_runs));
  EXPECT_EQ(timers.Pending(), 0u);
  EXPECT_EQ(ran.values().size(), expected_runs);
}

}  // namespace
}  // namespace defender
