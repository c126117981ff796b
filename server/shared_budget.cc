#include "server/shared_budget.h"

#include <algorithm>
#include <atomic>
#include <map>
#include <optional>
#include <utility>
#include <vector>

#include "absl/random/random.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "adapters/common/error.h"

namespace defender {
namespace {

constexpr char kPrefix[] = "defender-plugin:";

// KEYS[1] the key's slot log (sorted set: score = slot time in µs of Redis's
// clock). ARGV: per_minute, per_hour (0 = window off), max_wait_us (the
// latest slot the caller takes, from now), member (unique). Returns
// {granted (0/1), delay_us from now, binding window ("minute"/"hour"/"")}.
// Numbers go to Redis as %.0f strings: Lua's default conversion keeps only
// 14 digits, fewer than a µs timestamp has.
const redis::Script kAcquire(R"lua(
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local key = KEYS[1]
local windows = {{60000000, tonumber(ARGV[1]), 'minute'}, {3600000000, tonumber(ARGV[2]), 'hour'}}
local longest = 0
for _, w in ipairs(windows) do
  if w[2] > 0 and w[1] > longest then longest = w[1] end
end
if longest == 0 then return {1, 0, ''} end
redis.call('ZREMRANGEBYSCORE', key, '-inf', string.format('%.0f', now - longest))
local slot = now
local binding = ''
local last = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
if #last > 0 and tonumber(last[2]) > slot then
  slot = tonumber(last[2])
  binding = 'minute'
end
local count = redis.call('ZCARD', key)
for _, w in ipairs(windows) do
  if w[2] > 0 and count >= w[2] then
    local e = redis.call('ZRANGE', key, -w[2], -w[2], 'WITHSCORES')
    local free = tonumber(e[2]) + w[1]
    if free > slot then
      slot = free
      binding = w[3]
    end
  end
end
local delay = slot - now
if delay > tonumber(ARGV[3]) then return {0, string.format('%.0f', delay), binding} end
redis.call('ZADD', key, string.format('%.0f', slot), ARGV[4])
-- Kept until the latest slot (possibly reserved ahead) has left every window.
redis.call('PEXPIRE', key, math.floor((delay + longest) / 1000) + 60000)
return {1, string.format('%.0f', delay), binding}
)lua");

// KEYS[1] the slot log; ARGV[1] the member of a reservation given back.
const redis::Script kRelease("return redis.call('ZREM', KEYS[1], ARGV[1])");

// KEYS[1] the replicas (sorted set: score = last heartbeat, µs). ARGV[1] this
// replica, ARGV[2] the TTL in µs. Returns how many are alive.
const redis::Script kHeartbeat(R"lua(
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local ttl = tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], string.format('%.0f', now), ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%.0f', now - ttl))
redis.call('PEXPIRE', KEYS[1], math.floor(ttl / 1000) * 2)
return redis.call('ZCARD', KEYS[1])
)lua");

std::string RandomId() {
  absl::BitGen gen;
  return absl::StrCat(absl::Hex(absl::Uniform<uint64_t>(gen), absl::kZeroPad16));
}

long long ToMicros(absl::Duration d) {
  if (d == absl::InfiniteDuration()) return 1LL << 52;
  return std::max<long long>(0, absl::ToInt64Microseconds(d));
}

}  // namespace

std::string RedisRateKey(const std::string& key) { return absl::StrCat(kPrefix, "rate:", key); }

// --- SharedState ---------------------------------------------------------------------

struct SharedState::Core : std::enable_shared_from_this<SharedState::Core> {
  redis::RedisClient* redis;
  Scheduler* scheduler;
  SharedStateOptions options;
  ModeListener listener;
  std::atomic<uint64_t> next_member{0};

  mutable absl::Mutex mu;
  bool shared ABSL_GUARDED_BY(mu) = true;
  int most_replicas ABSL_GUARDED_BY(mu) = 1;
  bool stopped ABSL_GUARDED_BY(mu) = false;
  Scheduler::TaskId timer ABSL_GUARDED_BY(mu) = 0;
  // The listener is called outside mu, one change at a time, in order.
  absl::Mutex listener_mu;

  void SetMode(bool now_shared, const absl::Status& why) {
    absl::MutexLock order(&listener_mu);
    {
      absl::MutexLock lock(&mu);
      if (shared == now_shared) return;
      shared = now_shared;
    }
    if (listener) listener(now_shared, why);
  }

  void Beat() {
    {
      absl::MutexLock lock(&mu);
      if (stopped) return;
    }
    std::weak_ptr<Core> weak = weak_from_this();
    redis->Eval(kHeartbeat, {absl::StrCat(kPrefix, "replicas")},
                {options.replica_id, absl::StrCat(ToMicros(options.replica_ttl))},
                absl::Now() + std::min(options.heartbeat, options.call_timeout * 2),
                [weak](absl::StatusOr<redis::Reply> reply) {
                  std::shared_ptr<Core> core = weak.lock();
                  if (core == nullptr) return;
                  {
                    absl::MutexLock lock(&core->mu);
                    if (core->stopped) return;
                  }
                  if (reply.ok() && reply->type == redis::Reply::Type::kInteger) {
                    {
                      absl::MutexLock lock(&core->mu);
                      core->most_replicas =
                          std::max<int>(core->most_replicas, static_cast<int>(reply->integer));
                    }
                    core->SetMode(true, absl::OkStatus());
                  } else {
                    core->SetMode(false, reply.ok() ? absl::InternalError("bad heartbeat reply")
                                                    : reply.status());
                  }
                  absl::MutexLock lock(&core->mu);
                  if (core->stopped) return;
                  core->timer = core->scheduler->RunAt(absl::Now() + core->options.heartbeat,
                                                       [weak] {
                                                         if (auto c = weak.lock()) c->Beat();
                                                       });
                });
  }
};

SharedState::SharedState(redis::RedisClient& redis, Scheduler& scheduler,
                         SharedStateOptions options, ModeListener listener)
    : core_(std::make_shared<Core>()) {
  core_->redis = &redis;
  core_->scheduler = &scheduler;
  if (options.replica_id.empty()) options.replica_id = RandomId();
  options.min_replicas = std::max(1, options.min_replicas);
  core_->options = std::move(options);
  core_->listener = std::move(listener);
  core_->Beat();
}

SharedState::~SharedState() {
  absl::MutexLock lock(&core_->mu);
  core_->stopped = true;
  if (core_->timer != 0) core_->scheduler->Cancel(core_->timer);
}

bool SharedState::shared() const {
  absl::MutexLock lock(&core_->mu);
  return core_->shared;
}

int SharedState::FallbackReplicas() const {
  absl::MutexLock lock(&core_->mu);
  return std::max(core_->options.min_replicas, core_->most_replicas);
}

void SharedState::ReportFailure(const absl::Status& error) { core_->SetMode(false, error); }

redis::RedisClient& SharedState::redis() const { return *core_->redis; }
Scheduler& SharedState::scheduler() const { return *core_->scheduler; }
const SharedStateOptions& SharedState::options() const { return core_->options; }

std::string SharedState::NextMember() const {
  return absl::StrCat(core_->options.replica_id, ":", core_->next_member.fetch_add(1));
}

// --- SharedRateLimiter ---------------------------------------------------------------

struct SharedRateLimiter::Core : std::enable_shared_from_this<SharedRateLimiter::Core> {
  // Waiter is one caller waiting for a reserved slot: completed exactly once,
  // by its timer, its cancellation or the limiter's destruction.
  struct Waiter {
    std::string key;
    std::string member;
    Callback done;
    std::shared_ptr<Cancellation> cancellation;
    Cancellation::CallbackId on_cancel = 0;
    Scheduler::TaskId timer = 0;
  };

  RateLimits limits;
  SharedState* state;
  Clock* clock;
  absl::Mutex mu;
  bool destroyed ABSL_GUARDED_BY(mu) = false;
  uint64_t next_waiter ABSL_GUARDED_BY(mu) = 1;
  std::map<uint64_t, Waiter> waiters ABSL_GUARDED_BY(mu);
  std::shared_ptr<SlidingWindowLimiter> fallback ABSL_GUARDED_BY(mu);
  int fallback_replicas ABSL_GUARDED_BY(mu) = 0;
  // Fallbacks made for a smaller N, kept for the callers still waiting on them.
  std::vector<std::shared_ptr<SlidingWindowLimiter>> retired ABSL_GUARDED_BY(mu);

  // Fallback is the local share for N as it is now (a new one when N grew).
  std::shared_ptr<SlidingWindowLimiter> Fallback() {
    const int n = state->FallbackReplicas();
    absl::MutexLock lock(&mu);
    if (fallback == nullptr || fallback_replicas != n) {
      if (fallback != nullptr) retired.push_back(std::move(fallback));
      auto share = [n](int limit) { return limit <= 0 ? limit : std::max(1, limit / n); };
      fallback = std::make_shared<SlidingWindowLimiter>(
          RateLimits{share(limits.per_minute), share(limits.per_hour)}, state->scheduler(),
          *clock);
      fallback_replicas = n;
    }
    return fallback;
  }

  bool Destroyed() {
    absl::MutexLock lock(&mu);
    return destroyed;
  }

  // Take removes waiter `id` if it is still waiting.
  std::optional<Waiter> Take(uint64_t id) {
    absl::MutexLock lock(&mu);
    auto it = waiters.find(id);
    if (it == waiters.end()) return std::nullopt;
    Waiter waiter = std::move(it->second);
    waiters.erase(it);
    return waiter;
  }

  void Wait(const std::string& key, std::string member, absl::Duration delay,
            std::shared_ptr<Cancellation> cancellation, Callback done) {
    uint64_t id;
    {
      absl::MutexLock lock(&mu);
      if (destroyed) {
        std::move(done)(RateSlotShutdownError(key));
        return;
      }
      id = next_waiter++;
      Waiter& waiter = waiters[id];
      waiter.key = key;
      waiter.member = std::move(member);
      waiter.done = std::move(done);
      waiter.cancellation = cancellation;
      std::weak_ptr<Core> weak = weak_from_this();
      waiter.timer = state->scheduler().RunAt(clock->Now() + delay, [weak, id] {
        std::shared_ptr<Core> core = weak.lock();
        if (core == nullptr) return;
        std::optional<Waiter> w = core->Take(id);
        if (!w) return;
        if (w->cancellation != nullptr) w->cancellation->Forget(w->on_cancel);
        std::move(w->done)(absl::OkStatus());
      });
    }
    if (cancellation == nullptr) return;
    std::weak_ptr<Core> weak = weak_from_this();
    Cancellation::CallbackId on_cancel = cancellation->OnCancel([weak, id] {
      std::shared_ptr<Core> core = weak.lock();
      if (core == nullptr) return;
      std::optional<Waiter> w = core->Take(id);
      if (!w) return;
      core->state->scheduler().Cancel(w->timer);
      if (core->Destroyed()) return std::move(w->done)(RateSlotShutdownError(w->key));
      // Give the reservation back (best effort: if Redis is gone, it expires).
      core->state->redis().Eval(kRelease, {RedisRateKey(w->key)}, {w->member},
                                absl::Now() + core->state->options().call_timeout,
                                [](absl::StatusOr<redis::Reply>) {});
      std::move(w->done)(RateSlotCancelledError(w->key));
    });
    absl::MutexLock lock(&mu);
    auto it = waiters.find(id);
    if (it != waiters.end()) it->second.on_cancel = on_cancel;
  }
};

SharedRateLimiter::SharedRateLimiter(RateLimits limits, SharedState& state, Clock& clock)
    : core_(std::make_shared<Core>()) {
  core_->limits = limits;
  core_->state = &state;
  core_->clock = &clock;
}

SharedRateLimiter::~SharedRateLimiter() {
  std::map<uint64_t, Core::Waiter> waiters;
  std::shared_ptr<SlidingWindowLimiter> fallback;
  std::vector<std::shared_ptr<SlidingWindowLimiter>> retired;
  {
    absl::MutexLock lock(&core_->mu);
    core_->destroyed = true;
    waiters.swap(core_->waiters);
    fallback = std::move(core_->fallback);
    retired.swap(core_->retired);
  }
  for (auto& [id, waiter] : waiters) {
    core_->state->scheduler().Cancel(waiter.timer);
    if (waiter.cancellation != nullptr) waiter.cancellation->Forget(waiter.on_cancel);
    std::move(waiter.done)(RateSlotShutdownError(waiter.key));
  }
  fallback.reset();  // each completes its own waiters
  retired.clear();
}

void SharedRateLimiter::Acquire(const std::string& key, absl::Time deadline,
                                std::shared_ptr<Cancellation> cancellation, Callback done) {
  if (cancellation != nullptr && cancellation->IsCancelled()) {
    std::move(done)(RateSlotCancelledError(key));
    return;
  }
  const RateLimits& limits = core_->limits;
  if (limits.per_minute <= 0 && limits.per_hour <= 0) {
    std::move(done)(absl::OkStatus());
    return;
  }
  SharedState& state = *core_->state;
  if (!state.shared()) {
    core_->Fallback()->Acquire(key, deadline, std::move(cancellation), std::move(done));
    return;
  }
  const absl::Time now = core_->clock->Now();
  std::string member = state.NextMember();
  std::weak_ptr<Core> weak = core_;
  state.redis().Eval(
      kAcquire, {RedisRateKey(key)},
      {absl::StrCat(limits.per_minute), absl::StrCat(limits.per_hour),
       absl::StrCat(ToMicros(deadline - now)), member},
      // Redis gets what is left of the caller's deadline, at most call_timeout (and at
      // least 50 ms: a slot free now is still worth asking for).
      absl::Now() + std::min(state.options().call_timeout,
                             std::max(deadline - now, absl::Milliseconds(50))),
      [weak, key, member, deadline, cancellation = std::move(cancellation),
       done = std::move(done)](absl::StatusOr<redis::Reply> reply) mutable {
        std::shared_ptr<Core> core = weak.lock();
        if (core == nullptr || core->Destroyed()) {
          std::move(done)(RateSlotShutdownError(key));
          return;
        }
        if (!reply.ok() && reply.status().code() == absl::StatusCode::kDeadlineExceeded) {
          // Not sent: this replica's Redis client was busy, Redis is not at
          // fault. The local share decides this one call; the mode stays.
          core->Fallback()->Acquire(key, deadline, std::move(cancellation), std::move(done));
          return;
        }
        long long granted = 0, delay_us = 0;
        std::string window;
        bool parsed = false;
        if (reply.ok() && reply->type == redis::Reply::Type::kArray &&
            reply->elements.size() == 3) {
          const auto& e = reply->elements;
          granted = e[0].integer;
          parsed = (e[1].type == redis::Reply::Type::kInteger &&
                    (delay_us = e[1].integer, true)) ||
                   absl::SimpleAtoi(e[1].str, &delay_us);
          window = e[2].str;
        }
        if (!parsed) {
          core->state->ReportFailure(
              reply.ok() ? MakeError(absl::StatusCode::kInternal,
                                     "Redis returned an unexpected rate-slot reply",
                                     "REDIS_SCRIPT_ERROR")
                         : reply.status());
          // The local share decides this call (a slot Redis may have reserved
          // for it is wasted, never doubled).
          core->Fallback()->Acquire(key, deadline, std::move(cancellation), std::move(done));
          return;
        }
        const absl::Duration delay = absl::Microseconds(delay_us);
        if (granted == 0) {
          std::move(done)(RateLimitedError(key, window.empty() ? "minute" : window, delay,
                                           core->limits));
          return;
        }
        if (delay <= absl::ZeroDuration()) {
          std::move(done)(absl::OkStatus());
          return;
        }
        core->Wait(key, member, delay, std::move(cancellation), std::move(done));
      });
}

}  // namespace defender
