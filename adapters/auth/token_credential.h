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
// Errors: UNAUTHENTICATED when the token endpoint rejects the credentials (the
// message carries the AADSTS code and the correlation id; the ErrorInfo reason
// is TOKEN_REQUEST_REJECTED with metadata "aadsts_code", "error",
// "correlation_id", "trace_id", "http_status"); UNAVAILABLE / DEADLINE_EXCEEDED
// for transport faults; INTERNAL for an unreadable answer.
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
