#include "server/shared_requests.h"

#include <memory>
#include <string>

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
using Kind = RequestClaim::Kind;

// Replica is one process: its connection, shared state and request records.
struct Replica {
  explicit Replica(const std::string& url, absl::Duration lease = absl::Seconds(20)) {
    redis::HiredisClientOptions options;
    options.url = *redis::ParseRedisUrl(url);
    options.reconnect_pause = absl::Milliseconds(100);
    client = redis::HiredisClient::Create(options);
    state = std::make_unique<SharedState>(*client, timers, SharedStateOptions{});
    SharedRequestsOptions request_options;
    request_options.lease = lease;
    request_options.max_poll = absl::Milliseconds(100);
    request_options.record_retry = absl::Milliseconds(100);
    requests = std::make_unique<SharedRequests>(*state, request_options);
  }
  ~Replica() {
    requests.reset();
    state.reset();
    client.reset();
  }

  // ClaimAsync starts a claim; the returned notification fires with *out set.
  std::shared_ptr<absl::Notification> ClaimAsync(const std::string& key, const std::string& params,
                                                 RequestClaim* out) {
    auto done = std::make_shared<absl::Notification>();
    requests->Claim(key, params, [done, out](RequestClaim claim) {
      *out = std::move(claim);
      done->Notify();
    });
    return done;
  }
  RequestClaim Claim(const std::string& key, const std::string& params = "p") {
    RequestClaim claim;
    ClaimAsync(key, params, &claim)->WaitForNotification();
    return claim;
  }

  TimerThread timers;
  std::unique_ptr<redis::HiredisClient> client;
  std::unique_ptr<SharedState> state;
  std::unique_ptr<SharedRequests> requests;
};

v1::MachineAction Action(const std::string& id) {
  v1::MachineAction action;
  action.set_id(id);
  action.set_machine_id("1e5bc9d7e413ddd7902c2932e418702b84d0cc07");
  return action;
}

TEST(SharedRequestsTest, AnotherReplicaWaitsForTheRunAndGetsItsAction) {
  RedisServer redis;
  ASSERT_TRUE(redis.Start());
  Replica a(redis.url()), b(redis.url());
  RequestClaim first = a.Claim("k");
  ASSERT_EQ(first.kind, Kind::kRun);
  EXPECT_EQ(first.maybe_sent_since, absl::InfiniteFuture());
  RequestClaim second;
  auto done = b.ClaimAsync("k", "p", &second);
  absl::SleepFor(absl::Milliseconds(300));
  EXPECT_FALSE(done->HasBeenNotified());  // waiting for a's run
  a.requests->Finish("k", Action("A1"));
  ASSERT_TRUE(done->WaitForNotificationWithTimeout(absl::Seconds(10)));
  EXPECT_EQ(second.kind, Kind::kDone);
  EXPECT_EQ(second.action.id(), "A1");
  EXPECT_TRUE(second.waited);
  // And later, at once, from any replica.
  RequestClaim third = a.Claim("k");
  EXPECT_EQ(third.kind, Kind::kDone);
  EXPECT_FALSE(third.waited);
}

TEST(SharedRequestsTest, OtherParamsAreReused) {
  RedisServer redis;
  ASSERT_TRUE(redis.Start());
  Replica a(redis.url()), b(redis.url());
  ASSERT_EQ(a.Claim("k", "p1").kind, Kind::kRun);
  EXPECT_EQ(b.Claim("k", "p2").kind, Kind::kReused);
  a.requests->Finish("k", Action("A1"));
  EXPECT_EQ(b.Claim("k", "p2").kind, Kind::kReused);
}

TEST(SharedRequestsTest, UnknownOutcomeIsTakenOverLookingSinceTheFirstRun) {
  RedisServer redis;
  ASSERT_TRUE(redis.Start());
  Replica a(redis.url()), b(redis.url());
  const absl::Time before = absl::Now();
  ASSERT_EQ(a.Claim("k").kind, Kind::kRun);
  absl::SleepFor(absl::Milliseconds(200));
  a.requests->Finish("k", MakeError(absl::StatusCode::kDeadlineExceeded, "no answer",
                                    "DEFENDER_TIMEOUT", {{"outcome", "unknown"}}));
  RequestClaim retry;
  for (absl::Time end = absl::Now() + absl::Seconds(5); absl::Now() < end;) {
    retry = b.Claim("k");
    if (retry.kind == Kind::kRun) break;  // Finish is on its way
    absl::SleepFor(absl::Milliseconds(20));
  }
  ASSERT_EQ(retry.kind, Kind::kRun);
  EXPECT_GE(retry.maybe_sent_since, before - absl::Milliseconds(100));
  EXPECT_LE(retry.maybe_sent_since, before + absl::Milliseconds(150));
}

TEST(SharedRequestsTest, AFailureWithNothingCreatedIsForgotten) {
  RedisServer redis;
  ASSERT_TRUE(redis.Start());
  Replica a(redis.url()), b(redis.url());
  ASSERT_EQ(a.Claim("k", "p1").kind, Kind::kRun);
  a.requests->Finish("k", MakeError(absl::StatusCode::kNotFound, "no such device",
                                    "MACHINE_NOT_FOUND"));
  RequestClaim retry;
  for (absl::Time end = absl::Now() + absl::Seconds(5); absl::Now() < end;) {
    retry = b.Claim("k", "p2");  // other params: fine once forgotten
    if (retry.kind == Kind::kRun) break;
    absl::SleepFor(absl::Milliseconds(20));
  }
  ASSERT_EQ(retry.kind, Kind::kRun);
  EXPECT_EQ(retry.maybe_sent_since, absl::InfiniteFuture());
}

TEST(SharedRequestsTest, ALiveRunIsRenewedAndAStoppedOneIsTakenOver) {
  RedisServer redis;
  ASSERT_TRUE(redis.Start());
  auto a = std::make_unique<Replica>(redis.url(), absl::Milliseconds(400));
  Replica b(redis.url(), absl::Milliseconds(400));
  ASSERT_EQ(a->Claim("k").kind, Kind::kRun);
  RequestClaim second;
  auto done = b.ClaimAsync("k", "p", &second);
  // Three leases long: a renews, so b keeps waiting.
  absl::SleepFor(absl::Milliseconds(1200));
  EXPECT_FALSE(done->HasBeenNotified()) << static_cast<int>(second.kind);
  // a stops without finishing: its lease lapses and b takes the run over.
  a.reset();
  ASSERT_TRUE(done->WaitForNotificationWithTimeout(absl::Seconds(10)));
  EXPECT_EQ(second.kind, Kind::kRun);
  EXPECT_TRUE(second.waited);
  EXPECT_NE(second.maybe_sent_since, absl::InfiniteFuture());
}

TEST(SharedRequestsTest, AnOutcomeReachedWithoutAClaimIsWrittenWhenRedisIsBack) {
  RedisServer redis;  // down
  Replica a(redis.url());
  ASSERT_EQ(a.Claim("k").kind, Kind::kUnavailable);
  a.requests->Unclaimed("k", "p", Action("A1"));  // the ledger ran it locally
  a.requests->Unclaimed("lost", "p", MakeError(absl::StatusCode::kDeadlineExceeded, "no answer",
                                               "DEFENDER_TIMEOUT", {{"outcome", "unknown"}}));
  a.requests->Unclaimed("none", "p", MakeError(absl::StatusCode::kNotFound, "no device",
                                               "MACHINE_NOT_FOUND"));  // nothing to keep
  absl::SleepFor(absl::Milliseconds(300));
  EXPECT_EQ(a.requests->Unrecorded(), 2u);
  ASSERT_TRUE(redis.Start());
  for (absl::Time end = absl::Now() + absl::Seconds(10);
       absl::Now() < end && a.requests->Unrecorded() > 0;) {
    absl::SleepFor(absl::Milliseconds(50));
  }
  ASSERT_EQ(a.requests->Unrecorded(), 0u);
  Replica b(redis.url());
  RequestClaim done = b.Claim("k");
  EXPECT_EQ(done.kind, Kind::kDone);
  EXPECT_EQ(done.action.id(), "A1");
  RequestClaim lost = b.Claim("lost");  // taken over, looking back an hour
  ASSERT_EQ(lost.kind, Kind::kRun);
  EXPECT_LT(lost.maybe_sent_since, absl::Now() - absl::Minutes(59));
  EXPECT_EQ(b.Claim("none").kind, Kind::kRun);
  EXPECT_EQ(b.Claim("none").kind, Kind::kRun);  // its own record: taken back
}

TEST(SharedRequestsTest, ARealActionWinsOverATakeOver) {
  RedisServer redis;
  ASSERT_TRUE(redis.Start());
  Replica a(redis.url(), absl::Milliseconds(300)), b(redis.url(), absl::Milliseconds(300)),
      c(redis.url());
  ASSERT_EQ(a.Claim("k").kind, Kind::kRun);
  // a's renewals stop (as when it cannot reach Redis for a while) and b,
  // waiting, takes the run over once the lease lapses.
  a.requests.reset();
  RequestClaim taken = b.Claim("k");
  ASSERT_EQ(taken.kind, Kind::kRun);
  EXPECT_TRUE(taken.waited);
  // a's run ends after all, with an action at Defender: that is the answer
  // from now on, whatever b's run does.
  a.requests = std::make_unique<SharedRequests>(*a.state);
  a.requests->Finish("k", Action("A-real"));
  RequestClaim seen = c.Claim("k");  // waits (b runs) until the record is done
  EXPECT_EQ(seen.kind, Kind::kDone);
  EXPECT_EQ(seen.action.id(), "A-real");
}

TEST(SharedRequestsTest, CloseAnswersWaitingAndLaterClaimsAsErrors) {
  RedisServer redis;
  ASSERT_TRUE(redis.Start());
  Replica a(redis.url()), b(redis.url());
  ASSERT_EQ(a.Claim("k").kind, Kind::kRun);
  RequestClaim waiting;
  auto done = b.ClaimAsync("k", "p", &waiting);
  absl::SleepFor(absl::Milliseconds(200));
  ASSERT_FALSE(done->HasBeenNotified());
  b.requests->Close();  // b is shutting down
  ASSERT_TRUE(done->WaitForNotificationWithTimeout(absl::Seconds(5)));
  EXPECT_EQ(waiting.kind, Kind::kUnavailable);
  EXPECT_TRUE(waiting.waited);  // an error, not "run it here"
  EXPECT_EQ(ErrorReason(waiting.error), "SHUTTING_DOWN");
  RequestClaim later = b.Claim("other");
  EXPECT_EQ(later.kind, Kind::kUnavailable);
  EXPECT_TRUE(later.waited);
  // a's run is untouched: it finishes, and others get its action.
  a.requests->Finish("k", Action("A1"));
  Replica c(redis.url());
  EXPECT_EQ(c.Claim("k").kind, Kind::kDone);
}

TEST(SharedRequestsTest, RedisDownIsUnavailable) {
  RedisServer redis;  // never started
  Replica a(redis.url());
  RequestClaim claim = a.Claim("k");
  EXPECT_EQ(claim.kind, Kind::kUnavailable);
  EXPECT_FALSE(claim.waited);
  EXPECT_EQ(claim.error.code(), absl::StatusCode::kUnavailable);
  EXPECT_FALSE(a.state->shared());
}

TEST(SharedRequestsTest, RedisLostWhileWaitingSaysSo) {
  RedisServer redis;
  ASSERT_TRUE(redis.Start());
  Replica a(redis.url()), b(redis.url());
  ASSERT_EQ(a.Claim("k").kind, Kind::kRun);
  RequestClaim second;
  auto done = b.ClaimAsync("k", "p", &second);
  absl::SleepFor(absl::Milliseconds(300));
  redis.Stop();
  ASSERT_TRUE(done->WaitForNotificationWithTimeout(absl::Seconds(10)));
  EXPECT_EQ(second.kind, Kind::kUnavailable);
  EXPECT_TRUE(second.waited);
}

}  // namespace
}  // namespace defender
