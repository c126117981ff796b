// token_credential.h: the one interface behind which every way of getting an
// Entra ID (Azure AD) access token sits.
//
// GetToken is asynchronous: it calls `done` exactly once, possibly inside the
// call (for a cached token) or later on a transport thread. `done` must not
// block.
//
//   TokenRequestContext ctx{.scopes = {"https://api.securitycenter.microsoft.com/.default"}};
//   credential.GetToken(ctx, [](absl::StatusOr<AccessToken> token) { ... });
//
// Errors (absl::Status with an ErrorInfo, adapters/common/error.h):
//   - UNAUTHENTICATED, reason TOKEN_REQUEST_REJECTED: the token endpoint
//     rejected the credentials (HTTP 400/401). The message carries the AADSTS
//     code, the OAuth error, the correlation id and, for the usual mistakes,
//     which setting to fix; metadata "http_status" always, and "aadsts_code"
//     (e.g. "AADSTS7000215"), "error" (e.g. "invalid_client"),
//     "correlation_id", "trace_id" when the answer had them.
//   - RESOURCE_EXHAUSTED, reason TOKEN_ENDPOINT_THROTTLED (HTTP 429), with a
//     RetryInfo when the answer had a Retry-After header.
//   - UNAVAILABLE, reason TOKEN_ENDPOINT_UNAVAILABLE (HTTP 5xx) or
//     TOKEN_ENDPOINT_UNEXPECTED_STATUS (any other status).
//   - INTERNAL, reason BAD_TOKEN_RESPONSE: a success without a usable
//     access_token and expiry.
//   - Transport faults (UNAVAILABLE, DEADLINE_EXCEEDED, ...) as the transport
//     reported them (reason UPSTREAM_*), the message prefixed "token request: ".
//   - INVALID_ARGUMENT, reason INVALID_CONFIGURATION: bad settings.
// No message or metadata ever holds a token or a secret.
#ifndef DEFENDER_ADAPTERS_AUTH_TOKEN_CREDENTIAL_H_
#define DEFENDER_ADAPTERS_AUTH_TOKEN_CREDENTIAL_H_

#include <string>
#include <vector>

#include "absl/functional/any_invocable.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace defender::auth {

// AccessToken is a bearer token and when it stops being valid. Never log
// `token`.
struct AccessToken {
  std::string token;
  absl::Time expires_on = absl::InfinitePast();
};

// TokenRequestContext says what the token is for.
struct TokenRequestContext {
  // The scopes requested, e.g. "https://api.securitycenter.microsoft.com/.default".
  std::vector<std::string> scopes;
  // When set, the token request gives up at this time.
  absl::Time deadline = absl::InfiniteFuture();
  // When set, a cached token equal to this one is not reused: the API refused
  // it (HTTP 401), so a new one is fetched. Concurrent callers that report
  // the same rejected token still share one new token request.
  std::string rejected_token;
};

// TokenCredential acquires access tokens. Implementations are thread-safe.
class TokenCredential {
 public:
  using Callback = absl::AnyInvocable<void(absl::StatusOr<AccessToken>) &&>;

  virtual ~TokenCredential() = default;

  // GetToken acquires a token for `context` and calls `done` exactly once.
  virtual void GetToken(const TokenRequestContext& context, Callback done) = 0;

  // Name says which credential this is, for logs and chained errors
  // (e.g. "ClientSecretCredential").
  virtual std::string Name() const = 0;
};

}  // namespace defender::auth

#endif  // DEFENDER_ADAPTERS_AUTH_TOKEN_CREDENTIAL_H_
