#include "adapters/redis/hiredis_client.h"

#include <memory>
#include <string>
#include <vector>

#include "absl/synchronization/notification.h"
#include "absl/synchronization/blocking_counter.h"
#include "absl/time/clock.h"
#include "adapters/common/error.h"
#include "gtest/gtest.h"
#include "tests/redis_server.h"

namespace defender::redis {
namespace {

using defender::testing::RedisServer;

const Script kEcho("return {ARGV[1], tonumber(ARGV[2]), KEYS[1]}");
const Script kIncr("return redis.call('INCR', KEYS[1])");
const Script kBroken("return redis.call('NO_SUCH_COMMAND')");

absl::StatusOr<Reply> EvalNow(RedisClient& client, const Script& script,
                              std::vector<std::string> keys, std::vector<std::string> args,
                              absl::Duration timeout = absl::Seconds(5)) {
  absl::Notification done;
  absl::StatusOr<Reply> result;
  client.Eval(script, std::move(keys), std::move(args), absl::Now() + timeout,
              [&](absl::StatusOr<Reply> reply) {
                result = std::move(reply);
                done.Notify();
              });
  done.WaitForNotification();
  return result;
}

std::unique_ptr<HiredisClient> ClientFor(const RedisServer& server) {
  HiredisClientOptions options;
  options.url = *ParseRedisUrl(server.url());
  options.reconnect_pause = absl::Milliseconds(100);
  return HiredisClient::Create(options);
}

TEST(ParseRedisUrlTest, AcceptsHostPortAndDatabase) {
  absl::StatusOr<RedisUrl> url = ParseRedisUrl("redis://redis.internal:6380/2");
  ASSERT_TRUE(url.ok()) << url.status();
  EXPECT_EQ(url->host, "redis.internal");
  EXPECT_EQ(url->port, 6380);
  EXPECT_EQ(url->db, 2);
  url = ParseRedisUrl("redis://10.0.0.5");
  ASSERT_TRUE(url.ok());
  EXPECT_EQ(url->port, 6379);
  EXPECT_EQ(url->db, 0);
  url = ParseRedisUrl("redis://[::1]:7000/");
  ASSERT_TRUE(url.ok()) << url.status();
  EXPECT_EQ(url->host, "::1");
  EXPECT_EQ(url->port, 7000);
  EXPECT_EQ(url->Display(), "::1:7000/0");
}

TEST(ParseRedisUrlTest, RefusesWhatItCannotUseWithoutEchoingAPassword) {
  for (const char* bad : {"", "http://h:1", "redis://", "redis://h:0", "redis://h:70000",
                          "redis://h:x", "redis://h:", "redis://h/16", "redis://h/-1",
                          "redis://h/a", "redis://[::1", "redis://h h"}) {
    absl::StatusOr<RedisUrl> url = ParseRedisUrl(bad);
    EXPECT_EQ(url.status().code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_EQ(ErrorReason(url.status()), "INVALID_REDIS_URL") << bad;
  }
  absl::StatusOr<RedisUrl> url = ParseRedisUrl("redis://user:hunter2@h:1");
  EXPECT_EQ(url.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(std::string(url.status().message()).find("hunter2"), std::string::npos);
}

TEST(ScriptTest, KnowsItsSha1) {
  // sha1("return 1"), as SCRIPT LOAD would name it.
  EXPECT_EQ(Script("return 1").sha1(), "e0e1f9fabfc9d4800c877a703b823ac0578ff8db");
}

TEST(HiredisClientTest, RunsScriptsLoadingThemOnce) {
  RedisServer server;
  ASSERT_TRUE(server.Start());
  std::unique_ptr<HiredisClient> client = ClientFor(server);
  absl::StatusOr<Reply> reply = EvalNow(*client, kEcho, {"k"}, {"hello", "42"});
  ASSERT_TRUE(reply.ok()) << reply.status();
  ASSERT_EQ(reply->type, Reply::Type::kArray);
  ASSERT_EQ(reply->elements.size(), 3u);
  EXPECT_EQ(reply->elements[0].str, "hello");
  EXPECT_EQ(reply->elements[1].integer, 42);
  EXPECT_EQ(reply->elements[2].str, "k");
  // Known by its SHA-1 from now on: again, and the counter counts once per call.
  for (int i = 1; i <= 3; ++i) {
    reply = EvalNow(*client, kIncr, {"counter"}, {});
    ASSERT_TRUE(reply.ok()) << reply.status();
    EXPECT_EQ(reply->integer, i);
  }
}

TEST(HiredisClientTest, ScriptErrorIsInternalNotUnavailable) {
  RedisServer server;
  ASSERT_TRUE(server.Start());
  std::unique_ptr<HiredisClient> client = ClientFor(server);
  absl::StatusOr<Reply> reply = EvalNow(*client, kBroken, {}, {});
  EXPECT_EQ(reply.status().code(), absl::StatusCode::kInternal);
  EXPECT_EQ(ErrorReason(reply.status()), "REDIS_SCRIPT_ERROR");
  // The connection is still good.
  EXPECT_TRUE(EvalNow(*client, kIncr, {"c"}, {}).ok());
}

TEST(HiredisClientTest, ABurstIsPipelinedAndEveryCallAnswered) {
  RedisServer server;
  ASSERT_TRUE(server.Start());
  std::unique_ptr<HiredisClient> client = ClientFor(server);
  constexpr int kCalls = 500;
  absl::BlockingCounter left(kCalls);
  std::atomic<int> ok{0};
  for (int i = 0; i < kCalls; ++i) {
    client->Eval(kIncr, {"burst"}, {}, absl::Now() + absl::Seconds(10),
                 [&](absl::StatusOr<Reply> reply) {
                   if (reply.ok()) ok.fetch_add(1);
                   left.DecrementCount();
                 });
  }
  left.Wait();
  EXPECT_EQ(ok.load(), kCalls);
  absl::StatusOr<Reply> last = EvalNow(*client, kIncr, {"burst"}, {});
  ASSERT_TRUE(last.ok());
  EXPECT_EQ(last->integer, kCalls + 1);  // each ran exactly once
}

TEST(HiredisClientTest, UnreachableRedisFailsFastAsUnavailable) {
  RedisServer server;  // never started: nothing listens on its port
  std::unique_ptr<HiredisClient> client = ClientFor(server);
  absl::Time start = absl::Now();
  absl::StatusOr<Reply> reply = EvalNow(*client, kIncr, {"c"}, {});
  EXPECT_EQ(reply.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(ErrorReason(reply.status()), "REDIS_UNAVAILABLE");
  EXPECT_NE(std::string(reply.status().message()).find(std::to_string(server.port())),
            std::string::npos);
  // While it stays down, calls fail at once (no connect per call).
  for (int i = 0; i < 20; ++i) {
    EXPECT_EQ(EvalNow(*client, kIncr, {"c"}, {}).status().code(), absl::StatusCode::kUnavailable);
  }
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));
}

TEST(HiredisClientTest, ReconnectsWhenRedisComesBack) {
  RedisServer server;
  ASSERT_TRUE(server.Start());
  std::unique_ptr<HiredisClient> client = ClientFor(server);
  ASSERT_TRUE(EvalNow(*client, kIncr, {"c"}, {}).ok());
  server.Stop();
  EXPECT_EQ(EvalNow(*client, kIncr, {"c"}, {}).status().code(), absl::StatusCode::kUnavailable);
  ASSERT_TRUE(server.Start());  // the same port, empty, and the script unknown to it
  absl::StatusOr<Reply> reply;
  for (absl::Time end = absl::Now() + absl::Seconds(10); absl::Now() < end;) {
    reply = EvalNow(*client, kIncr, {"c"}, {});
    if (reply.ok()) break;
    absl::SleepFor(absl::Milliseconds(50));
  }
  ASSERT_TRUE(reply.ok()) << reply.status();
  EXPECT_EQ(reply->integer, 1);  // NOSCRIPT was answered by loading it
}

TEST(HiredisClientTest, RedisKilledMidBurstAnswersEveryCallOnce) {
  // Each call is answered exactly once: a reply, or UNAVAILABLE for those in
  // flight or queued when Redis died.
  RedisServer server;
  ASSERT_TRUE(server.Start());
  std::unique_ptr<HiredisClient> client = ClientFor(server);
  ASSERT_TRUE(EvalNow(*client, kIncr, {"c"}, {}).ok());
  constexpr int kCalls = 3000;
  absl::BlockingCounter left(kCalls);
  std::atomic<int> ok{0}, unavailable{0};
  for (int i = 0; i < kCalls; ++i) {
    if (i == kCalls / 3) server.Stop();
    client->Eval(kEcho, {"k"}, {std::string(2048, 'x'), "1"}, absl::Now() + absl::Seconds(10),
                 [&](absl::StatusOr<Reply> reply) {
                   (reply.ok() ? ok : unavailable).fetch_add(1);
                   if (!reply.ok()) EXPECT_EQ(reply.status().code(), absl::StatusCode::kUnavailable);
                   left.DecrementCount();
                 });
  }
  left.Wait();
  EXPECT_EQ(ok.load() + unavailable.load(), kCalls);
  EXPECT_GT(unavailable.load(), 0);
}

TEST(HiredisClientTest, ACallPastItsDeadlineIsNotSent) {
  RedisServer server;
  ASSERT_TRUE(server.Start());
  std::unique_ptr<HiredisClient> client = ClientFor(server);
  absl::StatusOr<Reply> reply = EvalNow(*client, kIncr, {"c"}, {}, -absl::Seconds(1));
  EXPECT_EQ(reply.status().code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_EQ(ErrorReason(reply.status()), "REDIS_QUEUE_TIMEOUT");
  reply = EvalNow(*client, kIncr, {"c"}, {});
  ASSERT_TRUE(reply.ok());
  EXPECT_EQ(reply->integer, 1);
}

TEST(HiredisClientTest, CallsRunInOrderWhenSomeScriptsAreNewToRedis) {
  // setA is known to the connection, setB is not: queued together behind a
  // slow script, B (sent first) must still run first.
  static const Script kSetA("redis.call('SET', KEYS[1], 'a') return 1");
  static const Script kSetB("redis.call('SET', KEYS[1], 'b') return 1");
  static const Script kSlow("local i = 0 while i < 3000000 do i = i + 1 end return i");
  static const Script kGet("return redis.call('GET', KEYS[1])");
  RedisServer server;
  ASSERT_TRUE(server.Start());
  std::unique_ptr<HiredisClient> client = ClientFor(server);
  ASSERT_TRUE(EvalNow(*client, kSetA, {"x"}, {}).ok());
  absl::BlockingCounter left(3);
  auto count = [&](absl::StatusOr<Reply>) { left.DecrementCount(); };
  client->Eval(kSlow, {}, {}, absl::Now() + absl::Seconds(10), count);
  absl::SleepFor(absl::Milliseconds(20));  // the slow one is on its way: the next two queue
  client->Eval(kSetB, {"x"}, {}, absl::Now() + absl::Seconds(10), count);
  client->Eval(kSetA, {"x"}, {}, absl::Now() + absl::Seconds(10), count);
  left.Wait();
  absl::StatusOr<Reply> x = EvalNow(*client, kGet, {"x"}, {});
  ASSERT_TRUE(x.ok()) << x.status();
  EXPECT_EQ(x->str, "a");
}

TEST(HiredisClientTest, DestructionAnswersQueuedCalls) {
  RedisServer server;
  ASSERT_TRUE(server.Start());
  std::unique_ptr<HiredisClient> client = ClientFor(server);
  std::atomic<int> answered{0};
  for (int i = 0; i < 100; ++i) {
    client->Eval(kIncr, {"c"}, {}, absl::Now() + absl::Seconds(5),
                 [&](absl::StatusOr<Reply>) { answered.fetch_add(1); });
  }
  client.reset();
  EXPECT_EQ(answered.load(), 100);
}

}  // namespace
}  // namespace defender::redis
