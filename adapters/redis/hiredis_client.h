// hiredis_client.h: RedisClient on Debian's hiredis (synchronous API) and one
// connection, reused, owned by one thread.
//
//   auto client = redis::HiredisClient::Create({.url = *redis::ParseRedisUrl(
//       "redis://127.0.0.1:6379")});
//   (*client)->Eval(script, {key}, {arg}, deadline, std::move(done));
//
// The thread takes every queued call at once and pipelines them: one write,
// then the replies in order, so a burst costs one round trip, not one per
// call, and calls run in the order they were made. A script goes as EVAL the
// first time on a connection and as EVALSHA after it (so a restarted Redis
// learns each script in order); a NOSCRIPT on a live connection (SCRIPT
// FLUSH) is answered by sending those calls again as EVAL.
//
// Timeouts: connecting waits at most `connect_timeout`; a batch waits for its
// replies until the latest deadline in it, but never longer than
// `command_timeout`; a call whose deadline passes while queued is failed
// without being sent, with DEADLINE_EXCEEDED (reason REDIS_QUEUE_TIMEOUT):
// Redis is not at fault, this client was busy. A broken or timed-out connection is closed (the replies
// in flight are lost: their calls get UNAVAILABLE) and the next batch
// reconnects; while Redis stays unreachable, calls fail at once and a new
// connection is tried at most every `reconnect_pause`, so a dead Redis costs
// callers no waiting. Nothing is retried here: the caller knows whether a
// script is safe to run twice.
#ifndef DEFENDER_ADAPTERS_REDIS_HIREDIS_CLIENT_H_
#define DEFENDER_ADAPTERS_REDIS_HIREDIS_CLIENT_H_

#include <deque>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "adapters/redis/redis_client.h"

struct redisContext;

namespace defender::redis {

struct HiredisClientOptions {
  RedisUrl url;
  absl::Duration connect_timeout = absl::Milliseconds(500);
  absl::Duration command_timeout = absl::Seconds(1);
  absl::Duration reconnect_pause = absl::Milliseconds(500);
};

class HiredisClient final : public RedisClient {
 public:
  // Create starts the client's thread; it does not connect yet (Redis may be
  // down when the plugin starts: the first call finds out).
  static std::unique_ptr<HiredisClient> Create(HiredisClientOptions options);
  // Completes every queued call with UNAVAILABLE, then joins the thread.
  ~HiredisClient() override;

  HiredisClient(const HiredisClient&) = delete;
  HiredisClient& operator=(const HiredisClient&) = delete;

  void Eval(const Script& script, std::vector<std::string> keys, std::vector<std::string> args,
            absl::Time deadline, Callback done) override;

 private:
  struct Call {
    const Script* script;
    std::vector<std::string> keys;
    std::vector<std::string> args;
    absl::Time deadline;
    Callback done;
  };
  explicit HiredisClient(HiredisClientOptions options);
  void Run();
  // RunBatch sends `calls` on the connection (connecting first if needed)
  // and completes each. Runs on the client's thread only.
  void RunBatch(std::vector<Call>& calls);
  bool Connect(std::string& error);
  void Disconnect();

  const HiredisClientOptions options_;
  absl::Mutex mu_;
  std::deque<Call> queue_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  // The client's thread's own state.
  redisContext* context_ = nullptr;
  std::set<std::string> loaded_;  // the SHA-1s of scripts this connection has run
  absl::Time next_connect_ = absl::InfinitePast();
  std::thread thread_;
};

}  // namespace defender::redis

#endif  // DEFENDER_ADAPTERS_REDIS_HIREDIS_CLIENT_H_
