// shared_requests.h: exactly-once across replicas: a request_id seen by any
// replica (sharing one Redis, --redis-url) gets the same action from any other.
//
// RequestLedger (request_ledger.h) asks SharedRequests before it runs a keyed
// request, after its own journal and its in-process coalescing:
//
//   requests.Claim(key, params, [](RequestClaim claim) { ... });
//   ... the work ...
//   requests.Finish(key, result);
//
// One Redis hash per request key holds the params, the state, the owner
// replica, its lease and, once done, the action. Each step is one Lua script:
//  - no record: this replica owns it (kRun) with a lease it renews while the
//    work runs (every lease / 4);
//  - other params: kReused (REQUEST_ID_REUSED);
//  - done: kDone with the recorded action, and nothing is sent;
//  - running under another replica's live lease: the claim waits, polling
//    (100 ms growing to 1 s, no thread held), for that replica's outcome;
//  - running under a lapsed lease (that replica stopped), or failed with the
//    outcome unknown: this replica takes it over (kRun) with
//    maybe_sent_since = when the earliest run started (by Redis's clock, as
//    an age), so the work looks for that action before creating one;
//  - failed with nothing created: forgotten, so a repeat runs again.
// Records expire after the request-id window.
//
// Redis unreachable: a claim that fails while the shared state was thought
// up is tried twice more (200 ms apart: a blip, or a slow answer whose script
// did run, which the retry finds as this replica's own record). Then a first
// claim answers kUnavailable, and the ledger runs the request locally with a
// lookback (see RequestLedger) and hands its outcome to Unclaimed, which
// writes it to Redis once Redis answers (retried every 2 s, at most 10,000
// kept), so a repeat on another replica finds it; a claim waiting on another
// replica's run answers the error instead (UNAVAILABLE, REDIS_UNAVAILABLE:
// that replica may be sending right now). A replica that stops waits for no
// claim: those still waiting answer kUnavailable as if waited (an error).
#ifndef DEFENDER_SERVER_SHARED_REQUESTS_H_
#define DEFENDER_SERVER_SHARED_REQUESTS_H_

#include <memory>
#include <string>

#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "defender/v1/response_service.pb.h"
#include "server/request_claims.h"
#include "server/shared_budget.h"

namespace defender {

struct SharedRequestsOptions {
  absl::Duration window = absl::Hours(24 * 7);  // how long a record is kept
  absl::Duration lease = absl::Seconds(20);     // a run's claim without renewal
  absl::Duration max_poll = absl::Seconds(1);   // the longest pause between polls
  absl::Duration retry_pause = absl::Milliseconds(200);  // between claim attempts on errors
  absl::Duration record_retry = absl::Seconds(2);        // between writes of unrecorded outcomes
  size_t max_unrecorded = 10000;
};

// SharedRequests is RequestClaims on the SharedState's Redis. Thread-safe.
// `state` must outlive it; destroying it stops its timers (renewals lapse,
// waiting claims answer kUnavailable).
class SharedRequests final : public RequestClaims {
 public:
  SharedRequests(SharedState& state, SharedRequestsOptions options = {});
  ~SharedRequests() override;

  SharedRequests(const SharedRequests&) = delete;
  SharedRequests& operator=(const SharedRequests&) = delete;

  // Close answers every claim still waiting with an error (UNAVAILABLE,
  // SHUTTING_DOWN; no run starts) and every later claim too, and stops the
  // renewals (runs still in flight end within their lease): for a plugin that
  // is shutting down, so that none of its calls waits on another replica's
  // run. Finish and Unclaimed still write (once). Idempotent.
  void Close();

  void Claim(const std::string& key, const std::string& params, ClaimDone done) override;
  void Finish(const std::string& key, const absl::StatusOr<v1::MachineAction>& result) override;
  void Unclaimed(const std::string& key, const std::string& params,
                 const absl::StatusOr<v1::MachineAction>& result) override;
  // Unrecorded counts the unclaimed outcomes not yet written to Redis.
  size_t Unrecorded() const;

 private:
  struct Core;
  std::shared_ptr<Core> core_;
};

// RedisRequestKey is the Redis key of a request key's record.
std::string RedisRequestKey(const std::string& key);

}  // namespace defender

#endif  // DEFENDER_SERVER_SHARED_REQUESTS_H_
