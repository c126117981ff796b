// scheduler.h: timers, so that waiting (for a rate slot, for a retry's backoff)
// costs no thread per waiting call.
//
//   TimerThread timers;
//   Scheduler::TaskId id = timers.RunAt(absl::Now() + absl::Seconds(2), [] { ... });
//   timers.Cancel(id);  // true: it will not run
//
// Tasks run on the scheduler's own thread, one at a time, and must not block.
//
// In tests, ManualScheduler runs tasks only when told, at a FakeClock's time:
//
//   FakeClock clock;
//   ManualScheduler scheduler(clock);
//   scheduler.RunAt(clock.Now() + absl::Seconds(60), [&] { fired = true; });
//   clock.Advance(absl::Seconds(60));
//   scheduler.RunDue();  // runs it, on this thread
#ifndef DEFENDER_ADAPTERS_COMMON_SCHEDULER_H_
#define DEFENDER_ADAPTERS_COMMON_SCHEDULER_H_

#include <cstddef>
#include <cstdint>
#include <map>
#include <thread>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/functional/any_invocable.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "adapters/common/clock.h"

namespace defender {

// Scheduler runs tasks at given times. Thread-safe.
class Scheduler {
 public:
  using Task = absl::AnyInvocable<void() &&>;
  using TaskId = uint64_t;

  virtual ~Scheduler() = default;

  // RunAt runs `task` at `when` or soon after (at once if `when` has passed),
  // never inside RunAt itself. Returns an id for Cancel (never 0).
  virtual TaskId RunAt(absl::Time when, Task task) = 0;

  // Cancel removes a task that has not started: true if it will not run, false
  // if it already ran, is running, or never existed.
  virtual bool Cancel(TaskId id) = 0;
};

namespace scheduler_internal {

// TimerQueue is the task list both schedulers share: tasks ordered by time,
// tasks due at the same time in the order they were added. Not thread-safe:
// its owner locks. About 200 bytes per task, plus what the task captures.
class TimerQueue {
 public:
  // Add queues `task` for `when` and returns its id (1, 2, 3, ...).
  Scheduler::TaskId Add(absl::Time when, Scheduler::Task task);

  // Remove takes the task `id` out of the queue into `*removed` (for the
  // caller to destroy outside its lock): true if it was queued.
  bool Remove(Scheduler::TaskId id, Scheduler::Task* removed);

  // PopDue moves the earliest task into `*task` and returns true if it is due
  // at `now`; else returns false.
  bool PopDue(absl::Time now, Scheduler::Task* task);

  // NextTime is the time of the earliest task, or InfiniteFuture.
  absl::Time NextTime() const;

  size_t size() const { return tasks_.size(); }

  // Tasks are queued tasks keyed by (time, id).
  using Tasks = std::map<std::pair<absl::Time, Scheduler::TaskId>, Scheduler::Task>;

  // TakeAll empties the queue and returns what it held (for the caller to
  // destroy outside its lock).
  Tasks TakeAll();

 private:
  Tasks tasks_;
  std::map<Scheduler::TaskId, absl::Time> when_;  // to find a task by id
  Scheduler::TaskId next_id_ = 1;
};

}  // namespace scheduler_internal

// TimerThread is the production Scheduler: one thread, tasks ordered by time
// (absl::Now()), same-time tasks in the order they were scheduled. Tasks run
// outside its lock, so a task may call RunAt and Cancel.
//
// Its destructor stops the thread (after the task running, if any) and drops
// the tasks that have not run, without running them; their captures are
// destroyed outside the lock. It must not be destroyed by one of its own tasks.
class TimerThread final : public Scheduler {
 public:
  TimerThread();
  ~TimerThread() override;

  TimerThread(const TimerThread&) = delete;
  TimerThread& operator=(const TimerThread&) = delete;

  TaskId RunAt(absl::Time when, Task task) override;
  bool Cancel(TaskId id) override;

  // Pending counts the tasks waiting to run.
  size_t Pending() const;

 private:
  void Loop();

  mutable absl::Mutex mu_;
  absl::CondVar wake_;  // signalled when the earliest task changes or at stop
  scheduler_internal::TimerQueue queue_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

// ManualScheduler is a Scheduler for tests: tasks run only when the test calls
// RunDue(), for those due at the clock's time (a FakeClock), on the calling
// thread. Deterministic: same-time tasks run in the order they were scheduled.
class ManualScheduler final : public Scheduler {
 public:
  explicit ManualScheduler(Clock& clock) : clock_(clock) {}

  TaskId RunAt(absl::Time when, Task task) override;
  bool Cancel(TaskId id) override;

  // RunDue runs every task due now (including tasks they schedule for now),
  // in time order; returns how many ran. "Now" is read once, at the start.
  int RunDue();
  // NextTime is the time of the earliest task, or InfiniteFuture.
  absl::Time NextTime() const;
  size_t Pending() const;

 private:
  Clock& clock_;
  mutable absl::Mutex mu_;
  scheduler_internal::TimerQueue queue_ ABSL_GUARDED_BY(mu_);
};

}  // namespace defender

#endif  // DEFENDER_ADAPTERS_COMMON_SCHEDULER_H_
