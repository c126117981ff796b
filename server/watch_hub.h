// watch_hub.h: polls machine actions for WatchMachineAction, one poll per
// action however many callers watch it.
//
// A watcher gets the action's state at once (the last one polled, or the
// first poll's answer), then each change of its status, then End(OK) when the
// status is final. Polls run on the scheduler: after `initial_interval`, the
// pause grows by `growth` per unchanged answer up to `max_interval` and comes
// back to `initial_interval` after a change. Every poll is an ordinary
// GetMachineAction through the tenant's client, so it takes a slot of the
// tenant's rate budget; a poll the budget cannot serve now, a throttled one
// and a transient fault (UNAVAILABLE, DEADLINE_EXCEEDED, INTERNAL) are tried
// again later, never reported. NOT_FOUND is retried during `not_found_grace`
// (Defender may not list a just-created action yet), then ends the watch;
// any other error ends it at once. When the last watcher leaves, the poll
// stops (a request in flight is cancelled).
#ifndef DEFENDER_SERVER_WATCH_HUB_H_
#define DEFENDER_SERVER_WATCH_HUB_H_

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>

#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "adapters/common/clock.h"
#include "adapters/common/scheduler.h"
#include "adapters/defender/defender_client.h"
#include "defender/v1/response_service.pb.h"

namespace defender {

// WatchOptions paces the polls.
struct WatchOptions {
  absl::Duration initial_interval = absl::Seconds(2);
  absl::Duration max_interval = absl::Seconds(30);
  double growth = 1.5;
  absl::Duration not_found_grace = absl::Seconds(15);
  absl::Duration poll_timeout = absl::Seconds(30);  // bound of one poll
};

// Watcher receives one watch's events; both may run on any thread, never at
// the same time for one watcher, and nothing runs after End.
class Watcher {
 public:
  virtual ~Watcher() = default;
  virtual void Update(const v1::MachineAction& action) = 0;
  virtual void End(const absl::Status& status) = 0;
};

// WatchHub runs the polls. Thread-safe; the scheduler and clock must outlive
// it. Destroying it ends every watch with UNAVAILABLE.
class WatchHub {
 public:
  using WatchId = uint64_t;

  WatchHub(Scheduler& scheduler, WatchOptions options, Clock& clock = Clock::Real());
  ~WatchHub();

  // Watch starts watching action `action_id` of `client`'s tenant for
  // `watcher` (held until End or Unwatch). Watches of the same client and
  // action share one poll.
  WatchId Watch(std::shared_ptr<api::DefenderClient> client, const std::string& action_id,
                std::shared_ptr<Watcher> watcher);

  // Unwatch forgets a watcher (its End is not called). Idempotent.
  void Unwatch(WatchId id);

  // Close ends every watch with `status` and every later Watch at once (for
  // a shutdown: streams end now rather than at the grace's end).
  void Close(const absl::Status& status);

  // Polls returns how many actions are being polled (for tests).
  size_t Polls() const;

 private:
  struct Poll;
  using PollKey = std::pair<const api::DefenderClient*, std::string>;

  void StartPoll(const std::shared_ptr<Poll>& poll);
  void OnAnswer(const std::shared_ptr<Poll>& poll, absl::StatusOr<api::MachineAction> answer);
  void Schedule(const std::shared_ptr<Poll>& poll, absl::Duration pause);
  void EndPoll(const std::shared_ptr<Poll>& poll, const absl::Status& status);
  // CancelTimer cancels a poll's timer (0: none) and counts it out of requests_.
  void CancelTimer(Scheduler::TaskId timer) ABSL_LOCKS_EXCLUDED(mu_);
  // ErasePollLocked forgets `poll` unless a newer poll has taken its key.
  void ErasePollLocked(const std::shared_ptr<Poll>& poll) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  Scheduler& scheduler_;
  const WatchOptions options_;
  Clock& clock_;
  mutable absl::Mutex mu_;
  WatchId next_id_ ABSL_GUARDED_BY(mu_) = 1;
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
  // Polls in flight and poll timers not yet run or cancelled: their callbacks
  // hold `this`, so the destructor waits for them.
  int requests_ ABSL_GUARDED_BY(mu_) = 0;
  absl::Status close_status_ ABSL_GUARDED_BY(mu_);
  std::map<PollKey, std::shared_ptr<Poll>> polls_ ABSL_GUARDED_BY(mu_);
  std::map<WatchId, std::shared_ptr<Poll>> watch_polls_ ABSL_GUARDED_BY(mu_);
};

}  // namespace defender

#endif  // DEFENDER_SERVER_WATCH_HUB_H_
