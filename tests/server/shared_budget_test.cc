#include "server/shared_budget.h"

#include <atomic>
#include <memory>
#include <string>
#include <vector>

#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "adapters/common/error.h"
#include "adapters/common/scheduler.h"
#include "adapters/redis/hiredis_client.h"
#include "gtest/gtest.h"
#include "tests/redis_server.h"

namespace defender {
namespace {

using defender::testing::RedisServer;

// Replica is one process's view: its own Redis connection, shared state and
// limiter, on a Redis other replicas use too.
struct Replica {
  Replica(const std::string& url, RateLimits limits, int min_replicas = 1,
          Clock& clock = Clock::Real()) {
    redis::HiredisClientOptions options;
    options.url = *redis::ParseRedisUrl(url);
    options.reconnect_pause = absl::Milliseconds(100);
    client = redis::HiredisClient::Create(options);
    SharedStateOptions shared_options;
    shared_options.min_replicas = min_replicas;
    shared_options.heartbeat = absl::Milliseconds(200);
    state = std::make_unique<SharedState>(*client, timers, shared_options,
                                          [this](bool shared, const absl::Status&) {
                                            (shared ? recoveries : degradations).fetch_add(1);
                                          });
    limiter = std::make_unique<SharedRateLimiter>(limits, *state, clock);
  }
  ~Replica() {
    limiter.reset();
    state.reset();
    client.reset();
  }

  // Acquire waits for the limiter's answer.
  absl::Status Acquire(const std::string& key, absl::Duration within,
                       std::shared_ptr<Cancellation> cancellation = nullptr) {
    absl::Notification done;
    absl::Status result;
    limiter->Acquire(key, absl::Now() + within, std::move(cancellation), [&](absl::Status s) {
      result = std::move(s);
      done.Notify();
    });
    done.WaitForNotification();
    return result;
  }

  bool WaitForMode(bool shared) {
    for (absl::Time end = absl::Now() + absl::Seconds(10); absl::Now() < end;) {
      if (state->shared() == shared) return true;
      absl::SleepFor(absl::Milliseconds(20));
    }
    return false;
  }

  TimerThread timers;
  std::unique_ptr<redis::HiredisClient> client;
  std::unique_ptr<SharedState> state;
  std::unique_ptr<SharedRateLimiter> limiter;
  std::atomic<int> degradations{0}, recoveries{0};
};

TEST(SharedRateLimiterTest, ReplicasTogetherGetExactlyTheBudget) {
  RedisServer redis;
  ASSERT_TRUE(redis.Start());
  RateLimits limits{5, 100};
  Replica a(redis.url(), limits), b(redis.url(), limits), c(redis.url(), limits);
  int granted = 0, limited = 0;
  for (int i = 0; i < 12; ++i) {
    Replica& r = i % 3 == 0 ? a : i % 3 == 1 ? b : c;
    absl::Status slot = r.Acquire("contoso/StopAndQuarantineFile", absl::Seconds(5));
    if (slot.ok()) {
      ++granted;
    } else {
      ++limited;
      EXPECT_EQ(slot.code(), absl::StatusCode::kResourceExhausted) << slot;
      EXPECT_EQ(ErrorReason(slot), "RATE_LIMITED");
      EXPECT_EQ(ErrorMetadata(slot, "window"), "minute");
      EXPECT_EQ(ErrorMetadata(slot, "limit"), "5");
      std::optional<absl::Duration> retry = GetRetryDelay(slot);
      ASSERT_TRUE(retry.has_value());
      EXPECT_GT(*retry, absl::Seconds(50));
      EXPECT_LE(*retry, absl::Seconds(60));
    }
  }
  EXPECT_EQ(granted, 5);
  EXPECT_EQ(limited, 7);
  // Another key (another tenant or API) has its own budget.
  EXPECT_TRUE(a.Acquire("fabrikam/StopAndQuarantineFile", absl::Seconds(5)).ok());
}

TEST(SharedRateLimiterTest, TheHourWindowBindsToo) {
  RedisServer redis;
  ASSERT_TRUE(redis.Start());
  Replica a(redis.url(), RateLimits{100, 3}), b(redis.url(), RateLimits{100, 3});
  EXPECT_TRUE(a.Acquire("k", absl::Seconds(5)).ok());
  EXPECT_TRUE(b.Acquire("k", absl::Seconds(5)).ok());
  EXPECT_TRUE(a.Acquire("k", absl::Seconds(5)).ok());
  absl::Status slot = b.Acquire("k", absl::Seconds(5));
  EXPECT_EQ(ErrorReason(slot), "RATE_LIMITED");
  EXPECT_EQ(ErrorMetadata(slot, "window"), "hour");
  EXPECT_GT(GetRetryDelay(slot).value_or(absl::ZeroDuration()), absl::Minutes(59));
}

TEST(SharedRateLimiterTest, AWaiterHoldsItsSlotAndGivesItBackWhenCancelled) {
  RedisServer redis;
  ASSERT_TRUE(redis.Start());
  Replica a(redis.url(), RateLimits{1, 0}), b(redis.url(), RateLimits{1, 0});
  ASSERT_TRUE(a.Acquire("k", absl::Seconds(5)).ok());
  // b's caller may wait two minutes: it reserves the slot a minute from now and waits.
  auto cancellation = std::make_shared<Cancellation>();
  absl::Notification done;
  absl::Status result;
  b.limiter->Acquire("k", absl::Now() + absl::Minutes(2), cancellation, [&](absl::Status s) {
    result = std::move(s);
    done.Notify();
  });
  absl::SleepFor(absl::Milliseconds(200));
  EXPECT_FALSE(done.HasBeenNotified());
  // That slot is taken: a third caller would come after it, past its own deadline.
  absl::Status third = a.Acquire("k", absl::Seconds(90));
  EXPECT_EQ(ErrorReason(third), "RATE_LIMITED");
  EXPECT_GT(GetRetryDelay(third).value_or(absl::ZeroDuration()), absl::Seconds(100));
  cancellation->Cancel();
  done.WaitForNotification();
  EXPECT_EQ(result.code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(ErrorReason(result), "CANCELLED");
  // Given back: the next slot is again a minute after the first, not two.
  absl::Duration next = absl::ZeroDuration();
  for (absl::Time end = absl::Now() + absl::Seconds(5); absl::Now() < end;) {
    next = GetRetryDelay(a.Acquire("k", absl::Seconds(1))).value_or(absl::ZeroDuration());
    if (next < absl::Seconds(61)) break;
    absl::SleepFor(absl::Milliseconds(50));  // the release may still be on its way
  }
  EXPECT_GT(next, absl::Seconds(50));
  EXPECT_LT(next, absl::Seconds(61));
}

TEST(SharedRateLimiterTest, AReplicaClockFarOffChangesNothing) {
  RedisServer redis;
  ASSERT_TRUE(redis.Start());
  // One replica's clock is an hour ahead: only the delays it is given are its
  // own to measure; every slot time is Redis's.
  FakeClock ahead(absl::Now() + absl::Hours(1));
  Replica a(redis.url(), RateLimits{2, 0}), b(redis.url(), RateLimits{2, 0}, 1, ahead);
  EXPECT_TRUE(a.Acquire("k", absl::Seconds(5)).ok());
  absl::Notification done;
  absl::Status result;
  b.limiter->Acquire("k", ahead.Now() + absl::Seconds(5), nullptr, [&](absl::Status s) {
    result = std::move(s);
    done.Notify();
  });
  done.WaitForNotification();
  EXPECT_TRUE(result.ok()) << result;
  EXPECT_EQ(ErrorReason(a.Acquire("k", absl::Seconds(5))), "RATE_LIMITED");
}

TEST(SharedRateLimiterTest, RedisDownMeansALocalShareThenSharedAgain) {
  RedisServer redis;
  ASSERT_TRUE(redis.Start());
  // 6 a minute for the cluster; at least 3 replicas: 2 each while Redis is down.
  Replica a(redis.url(), RateLimits{6, 0}, 3);
  ASSERT_TRUE(a.Acquire("k", absl::Seconds(5)).ok());
  redis.Stop();
  // The first call finds out (and is decided locally), or the heartbeat does first.
  int granted = 0;
  for (int i = 0; i < 5; ++i) granted += a.Acquire("k", absl::Seconds(5)).ok() ? 1 : 0;
  EXPECT_EQ(granted, 2);
  EXPECT_FALSE(a.state->shared());
  EXPECT_GE(a.degradations.load(), 1);
  EXPECT_EQ(a.state->FallbackReplicas(), 3);
  ASSERT_TRUE(redis.Start());
  ASSERT_TRUE(a.WaitForMode(true));
  EXPECT_GE(a.recoveries.load(), 1);
  // Shared again, on an empty Redis: the whole budget.
  granted = 0;
  for (int i = 0; i < 8; ++i) granted += a.Acquire("k", absl::Seconds(5)).ok() ? 1 : 0;
  EXPECT_EQ(granted, 6);
}

TEST(SharedRateLimiterTest, ReplicasSeenAliveSetTheShare) {
  RedisServer redis;
  ASSERT_TRUE(redis.Start());
  Replica a(redis.url(), RateLimits{8, 0}), b(redis.url(), RateLimits{8, 0}),
      c(redis.url(), RateLimits{8, 0}), d(redis.url(), RateLimits{8, 0});
  // Each heartbeat counts the live replicas; give them a few beats.
  for (absl::Time end = absl::Now() + absl::Seconds(5);
       absl::Now() < end && a.state->FallbackReplicas() < 4;) {
    absl::SleepFor(absl::Milliseconds(50));
  }
  EXPECT_EQ(a.state->FallbackReplicas(), 4);
  redis.Stop();
  ASSERT_TRUE(a.WaitForMode(false));
  int granted = 0;
  for (int i = 0; i < 5; ++i) granted += a.Acquire("k", absl::Seconds(5)).ok() ? 1 : 0;
  EXPECT_EQ(granted, 2);  // 8 / 4
}

TEST(SharedRateLimiterTest, ReservedSlotsAreKeptUntilTheyLeaveTheWindow) {
  RedisServer redis;
  ASSERT_TRUE(redis.Start());
  Replica a(redis.url(), RateLimits{1, 0});
  ASSERT_TRUE(a.Acquire("k", absl::Seconds(5)).ok());
  auto cancellation = std::make_shared<Cancellation>();
  absl::Notification done;
  a.limiter->Acquire("k", absl::Now() + absl::Minutes(5), cancellation,
                     [&](absl::Status) { done.Notify(); });  // reserved a minute ahead
  absl::SleepFor(absl::Milliseconds(200));
  static const redis::Script kTtl("return redis.call('PTTL', KEYS[1])");
  absl::Notification got;
  long long ttl_ms = 0;
  a.client->Eval(kTtl, {RedisRateKey("k")}, {}, absl::Now() + absl::Seconds(5),
                 [&](absl::StatusOr<redis::Reply> reply) {
                   if (reply.ok()) ttl_ms = reply->integer;
                   got.Notify();
                 });
  got.WaitForNotification();
  // The reserved slot (60 s ahead) counts for a minute after it: the log
  // must outlive both, or a caller then would find the window empty.
  EXPECT_GT(ttl_ms, 150000);
  cancellation->Cancel();
  done.WaitForNotification();
}

TEST(SharedRateLimiterTest, TheLocalShareFollowsTheReplicasSeen) {
  RedisServer redis;  // down at first: this replica knows of no other
  Replica a(redis.url(), RateLimits{8, 0});
  int granted = 0;
  for (int i = 0; i < 3; ++i) granted += a.Acquire("k", absl::Seconds(5)).ok() ? 1 : 0;
  EXPECT_EQ(granted, 3);  // N = 1: the whole budget, locally
  ASSERT_TRUE(redis.Start());
  Replica b(redis.url(), RateLimits{8, 0}), c(redis.url(), RateLimits{8, 0}),
      d(redis.url(), RateLimits{8, 0});
  for (absl::Time end = absl::Now() + absl::Seconds(10);
       absl::Now() < end && a.state->FallbackReplicas() < 4;) {
    absl::SleepFor(absl::Milliseconds(50));
  }
  ASSERT_EQ(a.state->FallbackReplicas(), 4);
  redis.Stop();
  ASSERT_TRUE(a.WaitForMode(false));
  granted = 0;
  for (int i = 0; i < 5; ++i) granted += a.Acquire("k", absl::Seconds(5)).ok() ? 1 : 0;
  EXPECT_EQ(granted, 2);  // 8 / 4 now, not what was left of 8
}

TEST(SharedRateLimiterTest, DestructionCompletesWaiters) {
  RedisServer redis;
  ASSERT_TRUE(redis.Start());
  auto a = std::make_unique<Replica>(redis.url(), RateLimits{1, 0});
  ASSERT_TRUE(a->Acquire("k", absl::Seconds(5)).ok());
  absl::Notification done;
  absl::Status result;
  a->limiter->Acquire("k", absl::Now() + absl::Minutes(5), nullptr, [&](absl::Status s) {
    result = std::move(s);
    done.Notify();
  });
  absl::SleepFor(absl::Milliseconds(200));
  a.reset();
  ASSERT_TRUE(done.HasBeenNotified());
  EXPECT_EQ(result.code(), absl::StatusCode::kCancelled);
}

}  // namespace
}  // namespace defender
