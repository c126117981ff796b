// rest_defender_client.h: DefenderClient over HTTPS (HttpTransport) with tokens
// from a TokenCredential, inside a rate budget, retrying what is safe to retry.
// Request bodies are built with nlohmann::json, never by string concatenation.
//
//   RestDefenderClient client({.api_base_url = "https://api.security.microsoft.com",
//                              .scope = "https://api.securitycenter.microsoft.com/.default",
//                              .tenant = "default", .limiter = &limiter,
//                              .scheduler = &timers},
//                             credential, transport);
//   client.StopAndQuarantineFile(params, {deadline, cancellation},
//                                [](absl::StatusOr<MachineAction> action) { ... });
//
// One call, until its deadline or its cancellation:
//  1. takes a slot from the limiter under "<tenant>/<operation>" (operations:
//     StopAndQuarantineFile, GetMachineAction, ListMachineActions (lookups),
//     CancelMachineAction, GetFile, ListMachines (FindMachinesByDnsName)); a
//     slot that cannot come before the deadline fails the call at once
//     (RESOURCE_EXHAUSTED);
//  2. gets a token and sends the request ("Authorization: Bearer <token>");
//  3. on HTTP 401 gets a new token (TokenRequestContext::rejected_token) and
//     sends once more;
//  4. on HTTP 429 waits for Retry-After (60 s when absent) and retries if that
//     fits the deadline, else fails with RESOURCE_EXHAUSTED and a RetryInfo;
//  5. on HTTP 5xx, a refused or reset connection, or a timeout, backs off
//     (exponential, jittered) and retries while the deadline allows, then
//     fails with the last error (UNAVAILABLE / DEADLINE_EXCEEDED); reads and
//     CancelMachineAction (cancelling twice is harmless) alike;
//  6. never sends a second StopAndQuarantineFile for one call when the first
//     may have reached Defender (the connection dropped after sending, the
//     answer timed out, a 5xx): it first looks for the action the first may
//     have created (GET /api/machineactions?$filter=machineId, type and
//     creation time; matched on SHA-1 and comment) and returns it if found.
//     When the outcome stays unknown at the deadline the error says so
//     (metadata "outcome" = "unknown"). A 400 ActiveRequestAlreadyExists after
//     such a fault is answered with the existing action. With
//     maybe_sent_since, the same lookup (from that time) comes before the
//     first POST: a found action is the answer, nothing found lets the POST
//     go, and a lookup that fails fails the call ("outcome" = "unknown",
//     nothing sent).
// Every failure after an HTTP request carries metadata "attempts" (requests
// sent, lookups included); token faults pass through as the credential
// reports them. Without a scheduler nothing waits: no retry except the one
// after a 401.
//
// Callbacks of the credential, transport, limiter and scheduler may come inside
// the call or later on other threads; the client holds no lock while calling
// out. The token never appears in a status message or its metadata.
#ifndef DEFENDER_ADAPTERS_DEFENDER_REST_DEFENDER_CLIENT_H_
#define DEFENDER_ADAPTERS_DEFENDER_REST_DEFENDER_CLIENT_H_

#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "adapters/auth/token_credential.h"
#include "adapters/common/clock.h"
#include "adapters/common/rate_limiter.h"
#include "adapters/common/retry.h"
#include "adapters/common/scheduler.h"
#include "adapters/defender/defender_client.h"
#include "adapters/http/http_transport.h"

namespace defender::api {

// RestDefenderClientOptions says where one tenant's API is and how to pace and
// retry calls to it.
struct RestDefenderClientOptions {
  std::string api_base_url;  // e.g. "https://api.security.microsoft.com"
  std::string scope;         // e.g. "https://api.securitycenter.microsoft.com/.default"
  std::string tenant = "default";    // names the rate budget: "<tenant>/<operation>"
  RateLimiter* limiter = nullptr;    // null: no local budget
  Scheduler* scheduler = nullptr;    // null: no waiting retries
  Clock* clock = nullptr;            // null: the real clock
  BackoffPolicy backoff;             // pauses between retries of transient faults
  int max_attempts = 8;              // sends of the call's own request, at most (lookups apart)
  // One HTTP attempt gets at most this long (and never more than what is left
  // of the deadline, less a reserve to look for an action whose POST's outcome
  // is unknown).
  absl::Duration attempt_timeout = absl::Seconds(20);
};

// RestDefenderClient is the production DefenderClient. Thread-safe. The
// client, its credential, transport, limiter and scheduler must outlive every
// call in flight.
class RestDefenderClient final : public DefenderClient {
 public:
  RestDefenderClient(RestDefenderClientOptions options, auth::TokenCredential& credential,
                     http::HttpTransport& transport);

  void StopAndQuarantineFile(const StopAndQuarantineFileParams& params,
                             const CallContext& context, ActionCallback done) override;
  void GetMachineAction(const std::string& action_id, const CallContext& context,
                        ActionCallback done) override;
  void CancelMachineAction(const std::string& action_id, const std::string& comment,
                           const CallContext& context, ActionCallback done) override;
  void GetFile(const std::string& hash, const CallContext& context, FileCallback done) override;
  void FindMachinesByDnsName(const std::string& computer_dns_name, const CallContext& context,
                             MachinesCallback done) override;

 private:
  struct Call;
  class Runner;
  friend class Runner;

  RestDefenderClientOptions options_;
  auth::TokenCredential& credential_;
  http::HttpTransport& transport_;
  Clock& clock_;
};

// MapDefenderError turns a non-2xx Defender answer into a status, per
// defender_client.h. The body {"error": {"code", "message", "target"}} is read
// leniently (it may be empty, HTML or truncated); Defender's message is kept
// (up to about 300 bytes) in the status message and in "defender_message".
// A 429 carries a RetryInfo from Retry-After (delay seconds or an HTTP-date;
// 60 s when absent), as does a 5xx or 408 that sends one. Other statuses
// (3xx, 408, 409, ...) have reason DEFENDER_UNEXPECTED_STATUS: UNAVAILABLE for
// 408, INTERNAL otherwise. Exposed for tests.
absl::Status MapDefenderError(const http::HttpResponse& response);

// MapDefenderError as above, with an HTTP-date Retry-After measured from `now`.
absl::Status MapDefenderError(const http::HttpResponse& response, absl::Time now);

}  // namespace defender::api

#endif  // DEFENDER_ADAPTERS_DEFENDER_REST_DEFENDER_CLIENT_H_
