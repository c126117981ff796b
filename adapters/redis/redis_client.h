// redis_client.h: Redis behind an interface, for the state replicas share
// (the rate budget, later the request journal).
//
// The plugin talks to Redis only through Lua scripts, each atomic on the
// server: one round trip per operation, no read-modify-write across replicas.
//
//   static const redis::Script kPing("return redis.call('PING')");
//   client.Eval(kPing, {}, {}, absl::Now() + absl::Seconds(1),
//               [](absl::StatusOr<redis::Reply> reply) { ... });
//
// Implementation: HiredisClient (hiredis_client.h). Tests may use fakes.
#ifndef DEFENDER_ADAPTERS_REDIS_REDIS_CLIENT_H_
#define DEFENDER_ADAPTERS_REDIS_REDIS_CLIENT_H_

#include <string>
#include <vector>

#include "absl/functional/any_invocable.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace defender::redis {

// RedisUrl is where Redis listens: redis://HOST[:PORT][/DB].
struct RedisUrl {
  std::string host;
  int port = 6379;
  int db = 0;
  // Display is "HOST:PORT/DB", for logs and errors (the URL holds no secret).
  std::string Display() const;
};

// ParseRedisUrl accepts redis://HOST[:PORT][/DB] (HOST a name, an IPv4
// address or a bracketed IPv6 one; DB 0-15 by Redis's default). Anything
// else, a password in the URL included, is INVALID_ARGUMENT naming the
// problem (never echoing a password).
absl::StatusOr<RedisUrl> ParseRedisUrl(absl::string_view url);

// Reply is a script's result as Redis returns it.
struct Reply {
  enum class Type { kNil, kInteger, kString, kArray };
  Type type = Type::kNil;
  long long integer = 0;       // kInteger
  std::string str;             // kString (and Redis status replies)
  std::vector<Reply> elements;  // kArray
};

// Script is a Lua script and its SHA-1 (for EVALSHA). Immutable; it must
// outlive every Eval that uses it (scripts are usually static constants).
class Script {
 public:
  explicit Script(std::string body);
  const std::string& body() const { return body_; }
  const std::string& sha1() const { return sha1_; }

 private:
  std::string body_;
  std::string sha1_;  // lowercase hex
};

// RedisClient runs scripts on one Redis server. Thread-safe.
class RedisClient {
 public:
  using Callback = absl::AnyInvocable<void(absl::StatusOr<Reply>) &&>;

  virtual ~RedisClient() = default;

  // Eval runs `script` with `keys` and `args` and calls `done` exactly once,
  // never inside Eval, from the client's own thread (so `done` must not
  // block), with:
  //  - the script's reply;
  //  - UNAVAILABLE, reason REDIS_UNAVAILABLE: Redis could not be reached, the
  //    connection broke, or no answer came by `deadline` (or the client's
  //    own command timeout, if sooner); the script may or may not have run;
  //  - DEADLINE_EXCEEDED, reason REDIS_QUEUE_TIMEOUT: `deadline` passed
  //    before the call could be sent (it was not);
  //  - INTERNAL, reason REDIS_SCRIPT_ERROR: Redis answered with an error.
  virtual void Eval(const Script& script, std::vector<std::string> keys,
                    std::vector<std::string> args, absl::Time deadline, Callback done) = 0;
};

}  // namespace defender::redis

#endif  // DEFENDER_ADAPTERS_REDIS_REDIS_CLIENT_H_
