// request_claims.h: the interface through which RequestLedger makes a keyed
// request exactly-once beyond its own process (SharedRequests in
// shared_requests.h: replicas on one Redis; fakes in tests).
#ifndef DEFENDER_SERVER_REQUEST_CLAIMS_H_
#define DEFENDER_SERVER_REQUEST_CLAIMS_H_

#include <string>

#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "defender/v1/response_service.pb.h"

namespace defender {

// RequestClaim is what Claim found.
struct RequestClaim {
  enum class Kind { kRun, kDone, kReused, kUnavailable };
  Kind kind = Kind::kUnavailable;
  // kRun: InfiniteFuture, or the time since which an earlier run elsewhere
  // may have reached Defender.
  absl::Time maybe_sent_since = absl::InfiniteFuture();
  v1::MachineAction action;  // kDone
  absl::Status error;        // kUnavailable
  bool waited = false;       // another replica's run was waited for
};

// RequestClaims is the interface RequestLedger uses (fakes in tests).
class RequestClaims {
 public:
  using ClaimDone = absl::AnyInvocable<void(RequestClaim) &&>;
  virtual ~RequestClaims() = default;
  // Claim calls `done` once, never inside Claim, on any thread.
  virtual void Claim(const std::string& key, const std::string& params, ClaimDone done) = 0;
  // Finish records the outcome of a run this replica claimed (kRun); a
  // failure whose status carries ErrorInfo metadata outcome=unknown may have
  // created an action, any other failure created none. Best effort.
  virtual void Finish(const std::string& key, const absl::StatusOr<v1::MachineAction>& result) = 0;
  // Unclaimed records the outcome of a run made without a claim (the claim
  // answered kUnavailable, waited false): an action, or a failure whose
  // outcome is unknown, so that a repeat on any replica finds it once the
  // shared state is back. Kept and retried until it is written. Best effort.
  virtual void Unclaimed(const std::string& key, const std::string& params,
                         const absl::StatusOr<v1::MachineAction>& result) = 0;
};

}  // namespace defender

#endif  // DEFENDER_SERVER_REQUEST_CLAIMS_H_
