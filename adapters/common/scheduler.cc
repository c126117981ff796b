#include "adapters/common/scheduler.h"

#include <utility>

#include "absl/time/clock.h"

namespace defender {
namespace scheduler_internal {

Scheduler::TaskId TimerQueue::Add(absl::Time when, Scheduler::Task task) {
  Scheduler::TaskId id = next_id_++;
  tasks_.emplace(std::make_pair(when, id), std::move(task));
  when_.emplace(id, when);
  return id;
}

bool TimerQueue::Remove(Scheduler::TaskId id, Scheduler::Task* removed) {
  auto it = when_.find(id);
  if (it == when_.end()) return false;
  auto node = tasks_.extract(std::make_pair(it->second, id));
  when_.erase(it);
  *removed = std::move(node.mapped());
  return true;
}

bool TimerQueue::PopDue(absl::Time now, Scheduler::Task* task) {
  if (tasks_.empty() || tasks_.begin()->first.first > now) return false;
  auto node = tasks_.extract(tasks_.begin());
  when_.erase(node.key().second);
  *task = std::move(node.mapped());
  return true;
}

absl::Time TimerQueue::NextTime() const {
  return tasks_.empty() ? absl::InfiniteFuture() : tasks_.begin()->first.first;
}

TimerQueue::Tasks TimerQueue::TakeAll() {
  when_.clear();
  return std::exchange(tasks_, {});
}

}  // namespace scheduler_internal

TimerThread::TimerThread() : thread_([this] { Loop(); }) {}

TimerThread::~TimerThread() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
    wake_.Signal();
  }
  thread_.join();
  // Destroying a dropped task may call RunAt or Cancel (a capture's
  // destructor): destroy outside the lock, until nothing is left.
  while (true) {
    scheduler_internal::TimerQueue::Tasks dropped;
    {
      absl::MutexLock lock(&mu_);
      dropped = queue_.TakeAll();
    }
    if (dropped.empty()) break;
  }
}

Scheduler::TaskId TimerThread::RunAt(absl::Time when, Task task) {
  absl::MutexLock lock(&mu_);
  bool earliest = when < queue_.NextTime();
  TaskId id = queue_.Add(when, std::move(task));
  if (earliest) wake_.Signal();  // the thread may sleep until a later time
  return id;
}

bool TimerThread::Cancel(TaskId id) {
  Task removed;  // destroyed after the lock is released
  absl::MutexLock lock(&mu_);
  // A removed earlier task leaves the thread waking at its time, finding a
  // later one and sleeping again: no signal needed.
  return queue_.Remove(id, &removed);
}

size_t TimerThread::Pending() const {
  absl::MutexLock lock(&mu_);
  return queue_.size();
}

void TimerThread::Loop() {
  mu_.Lock();
  while (!stopping_) {
    absl::Time now = absl::Now();
    absl::Time next = queue_.NextTime();
    if (next > now) {
      wake_.WaitWithDeadline(&mu_, next);  // InfiniteFuture: until signalled
      continue;
    }
    Task task;
    queue_.PopDue(now, &task);
    mu_.Unlock();
    std::move(task)();
    task = nullptr;  // destroy what it captured outside the lock
    mu_.Lock();
  }
  mu_.Unlock();
}

Scheduler::TaskId ManualScheduler::RunAt(absl::Time when, Task task) {
  absl::MutexLock lock(&mu_);
  return queue_.Add(when, std::move(task));
}

bool ManualScheduler::Cancel(TaskId id) {
  Task removed;  // destroyed after the lock is released
  absl::MutexLock lock(&mu_);
  return queue_.Remove(id, &removed);
}

int ManualScheduler::RunDue() {
  absl::Time now = clock_.Now();
  int ran = 0;
  while (true) {
    Task task;
    {
      absl::MutexLock lock(&mu_);
      if (!queue_.PopDue(now, &task)) break;
    }
    std::move(task)();
    ++ran;
  }
  return ran;
}

absl::Time ManualScheduler::NextTime() const {
  absl::MutexLock lock(&mu_);
  return queue_.NextTime();
}

size_t ManualScheduler::Pending() const {
  absl::MutexLock lock(&mu_);
  return queue_.size();
}

}  // namespace defender
