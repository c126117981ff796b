#include "server/rate_limiter.h"

#include <algorithm>
#include <cstdint>
#include <deque>
#include <iterator>
#include <map>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "adapters/common/error.h"

namespace defender {
namespace {

// Window is one sliding window: at most `limit` slots in any `size` of time.
struct Window {
  const char* name;  // "minute" or "hour", as ErrorInfo metadata says it
  const char* per;   // "a minute" or "an hour", for messages
  absl::Duration size;
  int limit;
};

}  // namespace

absl::Status RateSlotCancelledError(const std::string& key) {
  return MakeError(absl::StatusCode::kCancelled,
                   absl::StrCat("cancelled while waiting for a Defender request slot for ", key),
                   "CANCELLED", {{"key", key}});
}

absl::Status RateSlotShutdownError(const std::string& key) {
  return MakeError(absl::StatusCode::kCancelled,
                   absl::StrCat("the plugin is shutting down: gave up waiting for a Defender "
                                "request slot for ",
                                key),
                   "CANCELLED", {{"key", key}});
}

absl::Status RateLimitedError(const std::string& key, absl::string_view window,
                              absl::Duration delay, const RateLimits& limits) {
  const bool hour = window == "hour";
  const int limit = hour ? limits.per_hour : limits.per_minute;
  absl::Status status = MakeError(
      absl::StatusCode::kResourceExhausted,
      absl::StrCat("Defender request budget for ", key, " used up: ", limit, " requests ",
                   hour ? "an hour" : "a minute", "; the next slot frees in ",
                   absl::FormatDuration(delay),
                   ", after the call's deadline. Defender documents 100 calls a minute and "
                   "1,500 an hour per app, tenant and API; this plugin allows ",
                   limits.per_minute, " a minute and ", limits.per_hour,
                   " an hour (0 = no limit), set with DEFENDER_RATE_PER_MINUTE and "
                   "DEFENDER_RATE_PER_HOUR"),
      "RATE_LIMITED",
      {{"key", key}, {"window", hour ? "hour" : "minute"}, {"limit", absl::StrCat(limit)}});
  SetRetryDelay(status, delay);
  return status;
}

namespace {
}  // namespace

struct SlidingWindowLimiter::Core {
  // KeyState is the log of one key: the times of its slots, in order, granted
  // in the last (longest) window or reserved by waiting callers.
  struct KeyState {
    std::deque<absl::Time> slots;
    size_t waiting = 0;  // the key is kept while callers wait on it
  };
  using Keys = std::map<std::string, KeyState>;

  // Waiter is a caller waiting for its reserved slot.
  struct Waiter {
    Callback done;
    std::shared_ptr<Cancellation> cancellation;  // null if none
    Cancellation::CallbackId cancel_id = 0;      // 0 until registered
    Scheduler::TaskId timer = 0;
    Keys::iterator key;  // stable: a key with waiters is never erased
    absl::Time slot;
  };
  using Waiters = std::map<uint64_t, Waiter>;

  Core(RateLimits limits, Scheduler& scheduler, Clock& clock)
      : limits(limits), scheduler(scheduler), clock(clock) {
    if (limits.per_minute > 0) {
      windows.push_back({"minute", "a minute", absl::Minutes(1), limits.per_minute});
    }
    if (limits.per_hour > 0)
      windows.push_back({"hour", "an hour", absl::Hours(1), limits.per_hour});
    for (const Window& window : windows) longest = std::max(longest, window.size);
  }

  // EarliestSlot is the first time, not before `now`, at which a new slot
  // leaves every window within its limit; `*binding` is the window that
  // decided it (null if `now`). Slots s count in [s, s + size): a window with
  // n >= limit slots frees at the time its limit-th most recent slot leaves.
  // Safe even when reservations are not in order (some were given back): at
  // most limit - 1 logged slots are later than the one it waits out.
  absl::Time EarliestSlot(const std::deque<absl::Time>& slots, absl::Time now,
                          const Window** binding) const {
    absl::Time earliest = now;
    *binding = nullptr;
    for (const Window& window : windows) {
      size_t limit = static_cast<size_t>(window.limit);
      if (slots.size() < limit) continue;
      absl::Time frees = slots[slots.size() - limit] + window.size;
      if (frees > earliest) {
        earliest = frees;
        *binding = &window;
      }
    }
    return earliest;
  }

  // Prune drops the slots no window can see from `now` on.
  void Prune(KeyState& state, absl::Time now) const {
    while (!state.slots.empty() && state.slots.front() + longest <= now) state.slots.pop_front();
  }

  static void Insert(KeyState& state, absl::Time slot) {
    state.slots.insert(std::upper_bound(state.slots.begin(), state.slots.end(), slot), slot);
  }

  // GiveBack removes one slot at `slot` (absent if pruned since).
  static void GiveBack(KeyState& state, absl::Time slot) {
    auto it = std::lower_bound(state.slots.begin(), state.slots.end(), slot);
    if (it != state.slots.end() && *it == slot) state.slots.erase(it);
  }

  // Move records that the slot reserved for `from` was used at `to` (later:
  // its timer fired late), so later decisions see when the request really
  // went out. In place when the order allows, as it does for the usual
  // sub-millisecond lateness.
  static void Move(KeyState& state, absl::Time from, absl::Time to) {
    auto next = std::upper_bound(state.slots.begin(), state.slots.end(), from);
    if (next != state.slots.begin() && *std::prev(next) == from) {
      if (next == state.slots.end() || *next >= to) {
        *std::prev(next) = to;
        return;
      }
      state.slots.erase(std::prev(next));
    }
    Insert(state, to);
  }

  // SweepIdleKeys prunes every key once per longest window, and drops those
  // left empty, so keys no longer used cost nothing.
  void SweepIdleKeys(absl::Time now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    if (now < next_sweep) return;
    next_sweep = now + longest;
    for (auto it = keys.begin(); it != keys.end();) {
      Prune(it->second, now);
      if (it->second.slots.empty() && it->second.waiting == 0) {
        it = keys.erase(it);
      } else {
        ++it;
      }
    }
  }

  // Finish completes waiter `id` if it still waits: OK when its timer fires,
  // CANCELLED (its slot given back) when its cancellation is raised. Whichever
  // comes second finds it gone and does nothing.
  void Finish(uint64_t id, bool cancelled) {
    Waiters::node_type node;
    absl::Status result;
    {
      absl::MutexLock lock(&mu);
      auto it = waiters.find(id);
      if (it == waiters.end()) return;
      node = waiters.extract(it);
      Waiter& waiter = node.mapped();
      KeyState& state = waiter.key->second;
      --state.waiting;
      if (cancelled) {
        scheduler.Cancel(waiter.timer);  // false if firing now: it will find nothing
        GiveBack(state, waiter.slot);
        result = RateSlotCancelledError(waiter.key->first);
        if (state.slots.empty() && state.waiting == 0) keys.erase(waiter.key);
      } else if (absl::Time now = clock.Now(); now > waiter.slot) {
        Move(state, waiter.slot, now);
      }
    }
    Waiter& waiter = node.mapped();
    // Cancelled: the cancellation already dropped its callbacks.
    if (!cancelled && waiter.cancellation != nullptr) waiter.cancellation->Forget(waiter.cancel_id);
    std::move(waiter.done)(std::move(result));
  }

  const RateLimits limits;
  std::vector<Window> windows;  // the windows turned on
  absl::Duration longest = absl::ZeroDuration();
  Scheduler& scheduler;
  Clock& clock;

  mutable absl::Mutex mu;
  Keys keys ABSL_GUARDED_BY(mu);
  Waiters waiters ABSL_GUARDED_BY(mu);
  uint64_t next_waiter ABSL_GUARDED_BY(mu) = 1;
  absl::Time next_sweep ABSL_GUARDED_BY(mu) = absl::InfinitePast();
};

SlidingWindowLimiter::SlidingWindowLimiter(RateLimits limits, Scheduler& scheduler, Clock& clock)
    : core_(std::make_shared<Core>(limits, scheduler, clock)) {}

SlidingWindowLimiter::~SlidingWindowLimiter() {
  Core::Waiters waiters;
  std::vector<absl::Status> results;
  {
    absl::MutexLock lock(&core_->mu);
    waiters.swap(core_->waiters);
    results.reserve(waiters.size());
    for (auto& [id, waiter] : waiters) {
      core_->scheduler.Cancel(waiter.timer);
      --waiter.key->second.waiting;
      results.push_back(RateSlotShutdownError(waiter.key->first));
    }
  }
  auto result = results.begin();
  for (auto& [id, waiter] : waiters) {
    if (waiter.cancellation != nullptr) waiter.cancellation->Forget(waiter.cancel_id);
    std::move(waiter.done)(std::move(*result++));
  }
}

void SlidingWindowLimiter::Acquire(const std::string& key, absl::Time deadline,
                                   std::shared_ptr<Cancellation> cancellation, Callback done) {
  if (cancellation != nullptr && cancellation->IsCancelled()) {
    std::move(done)(RateSlotCancelledError(key));
    return;
  }
  Core& core = *core_;
  if (core.windows.empty()) {
    std::move(done)(absl::OkStatus());
    return;
  }
  absl::Time now = core.clock.Now();
  uint64_t waiter_id = 0;
  const Window* binding = nullptr;
  absl::Time slot;
  {
    absl::MutexLock lock(&core.mu);
    core.SweepIdleKeys(now);
    auto key_it = core.keys.try_emplace(key).first;
    Core::KeyState& state = key_it->second;
    core.Prune(state, now);
    slot = core.EarliestSlot(state.slots, now, &binding);
    if (slot <= now || slot <= deadline) {
      Core::Insert(state, slot);
      if (slot > now) {
        waiter_id = core.next_waiter++;
        Core::Waiter& waiter = core.waiters[waiter_id];
        waiter.done = std::move(done);
        waiter.cancellation = cancellation;
        waiter.key = key_it;
        waiter.slot = slot;
        ++state.waiting;
        // Scheduler locks are taken after ours, never the other way round: its
        // tasks run outside its lock.
        waiter.timer = core.scheduler.RunAt(slot, [weak = std::weak_ptr<Core>(core_), waiter_id] {
          if (std::shared_ptr<Core> core = weak.lock()) core->Finish(waiter_id, false);
        });
      }
    }
  }
  if (slot <= now) {
    std::move(done)(absl::OkStatus());
    return;
  }
  if (slot > deadline) {
    std::move(done)(RateLimitedError(key, binding->name, slot - now, core.limits));
    return;
  }
  if (cancellation == nullptr) return;
  // Registered outside the lock: the callback runs at once if the flag was
  // raised meanwhile. The timer may also have fired meanwhile; then nothing
  // will Forget the callback but us.
  Cancellation::CallbackId cancel_id =
      cancellation->OnCancel([weak = std::weak_ptr<Core>(core_), waiter_id] {
        if (std::shared_ptr<Core> core = weak.lock()) core->Finish(waiter_id, true);
      });
  bool finished;
  {
    absl::MutexLock lock(&core.mu);
    auto it = core.waiters.find(waiter_id);
    finished = it == core.waiters.end();
    if (!finished) it->second.cancel_id = cancel_id;
  }
  if (finished) cancellation->Forget(cancel_id);
}

size_t SlidingWindowLimiter::Waiting() const {
  absl::MutexLock lock(&core_->mu);
  return core_->waiters.size();
}

}  // namespace defender
