#include "server/watch_hub.h"

#include <algorithm>
#include <optional>
#include <vector>

#include "absl/strings/ascii.h"
#include "adapters/common/cancellation.h"
#include "adapters/common/error.h"
#include "server/status_conversion.h"

namespace defender {

struct WatchHub::Poll {
  PollKey key;
  std::shared_ptr<api::DefenderClient> client;
  std::string action_id;
  absl::Time started;
  absl::Mutex deliver_mu;  // orders deliveries to the watchers; taken before the hub's mu_
  // Guarded by the hub's mu_:
  std::map<WatchId, std::shared_ptr<Watcher>> watchers;
  std::optional<v1::MachineAction> last;
  absl::Duration interval;
  Scheduler::TaskId timer = 0;
  std::shared_ptr<Cancellation> cancellation;  // of the poll request in flight, if any
  bool ended = false;
};

WatchHub::WatchHub(Scheduler& scheduler, WatchOptions options, Clock& clock)
    : scheduler_(scheduler), options_(options), clock_(clock) {}

WatchHub::~WatchHub() {
  Close(MakeError(absl::StatusCode::kUnavailable, "the plugin is shutting down", "SHUTTING_DOWN"));
  // A poll answer still in flight holds `this`: wait for it to come back
  // (its request was cancelled, so it comes back soon); likewise a poll timer
  // that was already running when Close tried to cancel it.
  absl::MutexLock lock(&mu_);
  mu_.Await(absl::Condition(
      +[](WatchHub* hub) ABSL_NO_THREAD_SAFETY_ANALYSIS { return hub->requests_ == 0; }, this));
}

WatchHub::WatchId WatchHub::Watch(std::shared_ptr<api::DefenderClient> client,
                                  const std::string& action_id,
                                  std::shared_ptr<Watcher> watcher) {
  PollKey key(client.get(), absl::AsciiStrToLower(action_id));
  WatchId id = 0;
  {
    absl::MutexLock lock(&mu_);
    id = next_id_++;
  }
  // The poll found may end (a final status, an error, Close) before the
  // watcher is registered under its deliver_mu: then look again, never join it.
  while (true) {
    std::shared_ptr<Poll> poll;
    bool start = false;
    {
      absl::ReleasableMutexLock lock(&mu_);
      if (closed_) {
        absl::Status status = close_status_;
        lock.Release();
        watcher->End(status);
        return id;
      }
      auto it = polls_.find(key);
      // An ended poll may still wait for its last answer: it serves no one new.
      if (it == polls_.end() || it->second->ended) {
        poll = std::make_shared<Poll>();
        poll->key = key;
        poll->client = client;
        poll->action_id = action_id;
        poll->started = clock_.Now();
        poll->interval = options_.initial_interval;
        polls_[key] = poll;
        start = true;
      } else {
        poll = it->second;
      }
    }
    {
      absl::MutexLock deliver(&poll->deliver_mu);
      std::optional<v1::MachineAction> last;
      {
        absl::MutexLock lock(&mu_);
        if (poll->ended) continue;
        poll->watchers[id] = watcher;
        watch_polls_[id] = poll;
        last = poll->last;
      }
      if (last) watcher->Update(*last);
    }
    if (start) StartPoll(poll);
    return id;
  }
}

void WatchHub::Unwatch(WatchId id) {
  std::shared_ptr<Poll> poll;
  Scheduler::TaskId timer = 0;
  std::shared_ptr<Cancellation> cancellation;
  {
    absl::MutexLock lock(&mu_);
    auto it = watch_polls_.find(id);
    if (it == watch_polls_.end()) return;
    poll = it->second;
    watch_polls_.erase(it);
    poll->watchers.erase(id);
    if (!poll->watchers.empty() || poll->ended) return;
    // The last watcher left: stop polling.
    poll->ended = true;
    std::swap(timer, poll->timer);
    cancellation = poll->cancellation;
    if (timer != 0 || cancellation == nullptr) ErasePollLocked(poll);
  }
  CancelTimer(timer);
  if (cancellation) cancellation->Cancel();  // OnAnswer removes the poll
}

void WatchHub::ErasePollLocked(const std::shared_ptr<Poll>& poll) {
  auto it = polls_.find(poll->key);
  if (it != polls_.end() && it->second == poll) polls_.erase(it);
}

void WatchHub::Close(const absl::Status& status) {
  std::vector<std::shared_ptr<Poll>> polls;
  {
    absl::MutexLock lock(&mu_);
    if (!closed_) {
      closed_ = true;
      close_status_ = status;
    }
    for (auto& [key, poll] : polls_) polls.push_back(poll);
  }
  for (const auto& poll : polls) EndPoll(poll, status);
}

size_t WatchHub::Polls() const {
  absl::MutexLock lock(&mu_);
  return polls_.size();
}

void WatchHub::StartPoll(const std::shared_ptr<Poll>& poll) {
  auto cancellation = std::make_shared<Cancellation>();
  {
    absl::MutexLock lock(&mu_);
    poll->timer = 0;
    if (poll->ended) {
      ErasePollLocked(poll);
      return;
    }
    poll->cancellation = cancellation;
    ++requests_;
  }
  poll->client->GetMachineAction(
      poll->action_id, api::CallContext(clock_.Now() + options_.poll_timeout, cancellation),
      [this, poll](absl::StatusOr<api::MachineAction> answer) {
        OnAnswer(poll, std::move(answer));
      });
}

void WatchHub::OnAnswer(const std::shared_ptr<Poll>& poll,
                        absl::StatusOr<api::MachineAction> answer) {
  // The request counts as in flight until this function is done with `this`.
  struct Done {
    WatchHub* hub;
    ~Done() {
      absl::MutexLock lock(&hub->mu_);
      --hub->requests_;
    }
  } done{this};
  {
    absl::MutexLock lock(&mu_);
    poll->cancellation = nullptr;
    if (poll->ended) {
      ErasePollLocked(poll);
      return;
    }
  }
  if (!answer.ok()) {
    const absl::StatusCode code = answer.status().code();
    const bool young = clock_.Now() - poll->started < options_.not_found_grace;
    const bool transient = code == absl::StatusCode::kUnavailable ||
                           code == absl::StatusCode::kResourceExhausted ||
                           code == absl::StatusCode::kDeadlineExceeded ||
                           code == absl::StatusCode::kInternal ||
                           code == absl::StatusCode::kAborted;
    if (transient || (code == absl::StatusCode::kNotFound && young)) {
      absl::Duration pause;
      {
        absl::MutexLock lock(&mu_);
        poll->interval = std::min(poll->interval * options_.growth, options_.max_interval);
        pause = poll->interval;
      }
      if (auto hinted = GetRetryDelay(answer.status())) pause = std::max(pause, *hinted);
      return Schedule(poll, pause);
    }
    return EndPoll(poll, answer.status());
  }
  v1::MachineAction action;
  ToProto(*answer, &action);
  const bool final = answer->IsFinal();
  absl::Duration pause;
  {
    absl::MutexLock deliver(&poll->deliver_mu);
    std::vector<std::shared_ptr<Watcher>> watchers;
    bool changed = false;
    {
      absl::MutexLock lock(&mu_);
      changed = !poll->last || poll->last->status() != action.status() ||
                poll->last->defender_status() != action.defender_status();
      if (changed) poll->last = action;
      poll->interval = changed ? options_.initial_interval
                               : std::min(poll->interval * options_.growth, options_.max_interval);
      pause = poll->interval;
      for (auto& [id, watcher] : poll->watchers) watchers.push_back(watcher);
    }
    if (changed) {
      for (const auto& watcher : watchers) watcher->Update(action);
    }
  }
  if (final) return EndPoll(poll, absl::OkStatus());
  Schedule(poll, pause);
}

void WatchHub::Schedule(const std::shared_ptr<Poll>& poll, absl::Duration pause) {
  absl::MutexLock lock(&mu_);
  if (poll->ended) {
    ErasePollLocked(poll);
    return;
  }
  // Until it has run or been cancelled, the timer's task holds `this`.
  ++requests_;
  poll->timer = scheduler_.RunAt(clock_.Now() + pause, [this, poll] {
    StartPoll(poll);
    absl::MutexLock lock(&mu_);
    --requests_;
  });
}

void WatchHub::CancelTimer(Scheduler::TaskId timer) {
  // A timer that could not be cancelled is running: it counts itself out.
  if (timer == 0 || !scheduler_.Cancel(timer)) return;
  absl::MutexLock lock(&mu_);
  --requests_;
}

void WatchHub::EndPoll(const std::shared_ptr<Poll>& poll, const absl::Status& status) {
  absl::MutexLock deliver(&poll->deliver_mu);
  std::vector<std::shared_ptr<Watcher>> watchers;
  Scheduler::TaskId timer = 0;
  std::shared_ptr<Cancellation> cancellation;
  {
    absl::MutexLock lock(&mu_);
    for (auto& [id, watcher] : poll->watchers) {
      watchers.push_back(watcher);
      watch_polls_.erase(id);
    }
    poll->watchers.clear();
    poll->ended = true;
    std::swap(timer, poll->timer);
    cancellation = poll->cancellation;
    if (cancellation == nullptr) ErasePollLocked(poll);
  }
  CancelTimer(timer);
  if (cancellation) cancellation->Cancel();
  for (const auto& watcher : watchers) watcher->End(status);
}

}  // namespace defender
