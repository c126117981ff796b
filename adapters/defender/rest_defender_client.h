// rest_defender_client.h: DefenderClient over HTTPS (HttpTransport) with tokens
// from a TokenCredential. Request bodies are built with nlohmann::json, never
// by string concatenation.
//
//   RestDefenderClient client({.api_base_url = "https://api.security.microsoft.com",
//                              .scope = "https://api.securitycenter.microsoft.com/.default"},
//                             credential, transport);
//   client.StopAndQuarantineFile(params, absl::Now() + absl::Seconds(30),
//                                [](absl::StatusOr<MachineAction> action) { ... });
//
// Each call gets a token (scope `options.scope`, the call's deadline), sends
// one request with "Authorization: Bearer <token>", and on HTTP 401 asks for a
// new token (TokenRequestContext::rejected_token) and sends it once more. The
// token never appears in a status message or its metadata.
//
// Callbacks of the credential and the transport may come inside the call or
// later on another thread; the client holds no lock while calling out.
#ifndef DEFENDER_ADAPTERS_DEFENDER_REST_DEFENDER_CLIENT_H_
#define DEFENDER_ADAPTERS_DEFENDER_REST_DEFENDER_CLIENT_H_

#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "adapters/auth/token_credential.h"
#include "adapters/defender/defender_client.h"
#include "adapters/http/http_transport.h"

namespace defender::api {

// RestDefenderClientOptions says where one tenant's API is.
struct RestDefenderClientOptions {
  std::string api_base_url;  // e.g. "https://api.security.microsoft.com"
  std::string scope;         // e.g. "https://api.securitycenter.microsoft.com/.default"
};

// RestDefenderClient is the production DefenderClient. Thread-safe. The
// client, its credential and its transport must outlive every call in flight.
class RestDefenderClient final : public DefenderClient {
 public:
  RestDefenderClient(RestDefenderClientOptions options, auth::TokenCredential& credential,
                     http::HttpTransport& transport);

  void StopAndQuarantineFile(const StopAndQuarantineFileParams& params, absl::Time deadline,
                             ActionCallback done) override;
  void GetMachineAction(const std::string& action_id, absl::Time deadline,
                        ActionCallback done) override;

 private:
  struct Call;
  // Start gets a token for `call` (a new one when `rejected_token` is set),
  // then sends the request.
  void Start(std::shared_ptr<Call> call, std::string rejected_token);
  // Send sends `call`'s request with `token`.
  void Send(std::shared_ptr<Call> call, std::string token);
  // OnResponse finishes `call`, or retries it once after a 401.
  void OnResponse(std::shared_ptr<Call> call, std::string token,
                  absl::StatusOr<http::HttpResponse> response);

  RestDefenderClientOptions options_;
  auth::TokenCredential& credential_;
  http::HttpTransport& transport_;
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
