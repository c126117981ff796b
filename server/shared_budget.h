// shared_budget.h: the rate budget several replicas share, in Redis.
//
// Defender's budget (100 calls a minute, 1,500 an hour per app, tenant and
// API) belongs to the app and tenant, not to one replica. With --redis-url,
// every replica takes its slots from one Redis:
//
//   SharedState state(redis_client, scheduler, {.min_replicas = 3}, on_mode_change);
//   SharedRateLimiter limiter({.per_minute = 100, .per_hour = 1500}, state, scheduler);
//   limiter.Acquire("contoso/StopAndQuarantineFile", deadline, cancellation, done);
//
// The algorithm is the local limiter's (server/rate_limiter.h), run atomically
// in Redis by one Lua script per slot: a sliding window log per key (a sorted
// set of slot times, the last hour's), where a new slot goes at the earliest
// time t, not before the latest slot already granted or reserved, such that
// each window (t - W, t] holds fewer than its limit. Exact (never more than
// the limit in any window, no fixed-window edge bursts) and, being the same
// algorithm, with the same deadline rules: a slot later than the caller's
// deadline is refused at once (RATE_LIMITED with RetryInfo); a later slot
// within it is reserved, and the caller waits on a local timer for the time
// the script returns as a delay. One clock decides every slot: Redis's
// (redis.call('TIME') inside the script); a replica's own clock only measures
// the delay it was given, so replicas' clocks may disagree without letting
// the budget be exceeded. A cancelled waiter gives its reservation back.
//
// When Redis cannot be reached (a call fails, or the heartbeat does), the
// process turns degraded: each limiter falls back to a local sliding window
// with 1/N of each limit (at least 1), N = the most replicas seen alive in
// Redis (heartbeats every 2 s) or SharedStateOptions::min_replicas
// (--redis-replicas), whichever is larger; the listener is told (the plugin
// logs a warning, flips the "redis" health service to NOT_SERVING and a
// metric). The heartbeat keeps trying; when it gets through, the process is
// shared again. Never unbounded: in the window where Redis is lost, slots
// granted in Redis before plus the local shares after can add up to at most
// twice the budget; N too small (a replica count that grew while Redis was
// down) gives more.
#ifndef DEFENDER_SERVER_SHARED_BUDGET_H_
#define DEFENDER_SERVER_SHARED_BUDGET_H_

#include <memory>
#include <string>

#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "absl/time/time.h"
#include "adapters/common/cancellation.h"
#include "adapters/common/clock.h"
#include "adapters/common/rate_limiter.h"
#include "adapters/common/scheduler.h"
#include "adapters/redis/redis_client.h"
#include "server/rate_limiter.h"

namespace defender {

struct SharedStateOptions {
  // This replica's name in Redis; empty: a random one.
  std::string replica_id;
  // The fewest replicas to assume when degraded (--redis-replicas).
  int min_replicas = 1;
  absl::Duration heartbeat = absl::Seconds(2);
  // A replica not heard from for this long no longer counts as alive.
  absl::Duration replica_ttl = absl::Seconds(10);
  // The longest a slot request waits for Redis before the local fallback.
  absl::Duration call_timeout = absl::Milliseconds(500);
};

// SharedState is the process's link to Redis: shared or degraded, and how
// many replicas there are. Thread-safe.
class SharedState {
 public:
  // ModeListener hears every change: shared (true) or degraded (false, with
  // the error that caused it). Called from the Redis client's thread; must
  // not block.
  using ModeListener = absl::AnyInvocable<void(bool shared, const absl::Status& why)>;

  // `redis` and `scheduler` must outlive this object. Starts shared; the
  // first heartbeat goes at once.
  SharedState(redis::RedisClient& redis, Scheduler& scheduler, SharedStateOptions options,
              ModeListener listener = nullptr);
  ~SharedState();

  SharedState(const SharedState&) = delete;
  SharedState& operator=(const SharedState&) = delete;

  bool shared() const;
  // FallbackReplicas is N of the degraded shares.
  int FallbackReplicas() const;
  // ReportFailure: a call could not reach Redis; degraded until a heartbeat
  // gets through.
  void ReportFailure(const absl::Status& error);

  redis::RedisClient& redis() const;
  Scheduler& scheduler() const;
  const SharedStateOptions& options() const;
  // NextMember names one slot uniquely across replicas.
  std::string NextMember() const;

 private:
  struct Core;
  std::shared_ptr<Core> core_;
};

// SharedRateLimiter is a RateLimiter over SharedState (see the top of this
// file), falling back to a local SlidingWindowLimiter while degraded. Its
// errors are the local limiter's. Destroying it completes its waiters with
// CANCELLED (shutting down). Thread-safe.
class SharedRateLimiter final : public RateLimiter {
 public:
  SharedRateLimiter(RateLimits limits, SharedState& state, Clock& clock = Clock::Real());
  ~SharedRateLimiter() override;

  SharedRateLimiter(const SharedRateLimiter&) = delete;
  SharedRateLimiter& operator=(const SharedRateLimiter&) = delete;

  void Acquire(const std::string& key, absl::Time deadline,
               std::shared_ptr<Cancellation> cancellation, Callback done) override;

 private:
  struct Core;
  std::shared_ptr<Core> core_;
};

// RedisRateKey is the Redis key of a limiter key's slots.
std::string RedisRateKey(const std::string& key);

}  // namespace defender

#endif  // DEFENDER_SERVER_SHARED_BUDGET_H_
