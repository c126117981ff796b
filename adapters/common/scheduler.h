// scheduler.h: timers, so that waiting (for a rate slot, for a retry's backoff)
// costs no thread per waiting call.
//
//   TimerThread timers;
//   Scheduler::TaskId id = timers.RunAt(absl::Now() + absl::Seconds(2), [] { ... });
//   timers.Cancel(id);  // true: it will not run
//
// Tasks run on the scheduler's own thread, one at a time, and must not block.
#ifndef DEFENDER_ADAPTERS_COMMON_SCHEDULER_H_
#define DEFENDER_ADAPTERS_COMMON_SCHEDULER_H_

#include <cstdint>
#include <map>
#include <thread>
#include <utility>

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

// TimerThread is the production Scheduler: one thread, tasks ordered by time.
// Its destructor drops the tasks that have not run.
class TimerThread final : public Scheduler {
 public:
  TimerThread();
  ~TimerThread() override;

  TaskId RunAt(absl::Time when, Task task) override;
  bool Cancel(TaskId id) override;

  // Pending counts the tasks waiting to run.
  size_t Pending() const;

 private:
  void Loop();

  mutable absl::Mutex mu_;
  // Ordered by (time, id): the first entry is the next to run.
  std::map<std::pair<absl::Time, TaskId>, Task> tasks_ ABSL_GUARDED_BY(mu_);
  std::map<TaskId, absl::Time> when_ ABSL_GUARDED_BY(mu_);
  TaskId next_id_ ABSL_GUARDED_BY(mu_) = 1;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

// ManualScheduler is a Scheduler for tests: tasks run only when the test calls
// RunDue(), for those due at the FakeClock's time.
class ManualScheduler final : public Scheduler {
 public:
  explicit ManualScheduler(Clock& clock) : clock_(clock) {}

  TaskId RunAt(absl::Time when, Task task) override;
  bool Cancel(TaskId id) override;

  // RunDue runs every task due now (including tasks they schedule for now),
  // in time order; returns how many ran.
  int RunDue();
  // NextTime is the time of the earliest task, or InfiniteFuture.
  absl::Time NextTime() const;
  size_t Pending() const;

 private:
  Clock& clock_;
  mutable absl::Mutex mu_;
  std::map<std::pair<absl::Time, TaskId>, Task> tasks_ ABSL_GUARDED_BY(mu_);
  std::map<TaskId, absl::Time> when_ ABSL_GUARDED_BY(mu_);
  TaskId next_id_ ABSL_GUARDED_BY(mu_) = 1;
};

}  // namespace defender

#endif  // DEFENDER_ADAPTERS_COMMON_SCHEDULER_H_
