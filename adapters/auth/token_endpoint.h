// token_endpoint.h: the client-credentials request to an Entra ID (v2) token
// endpoint, shared by every credential that authenticates an application
// there: with a client secret, a certificate (a signed JWT) or a federated
// token (workload identity). Only how the client proves who it is differs;
// the URL, the rest of the form, the retries and the reading of the answer
// are the same, and live here.
//
//   POST {authority_host}/{tenant_id}/oauth2/v2.0/token
//   grant_type=client_credentials&client_id=...&<client auth>&scope=...
//
// A credential gives a ClientAuthSource that returns the client-auth form
// fields for each attempt (a secret, or a fresh assertion), or an error:
//
//   auto client = TokenEndpointClient::Create(
//       options,
//       [secret](const std::string& token_url, absl::Time now)
//           -> absl::StatusOr<TokenEndpointClient::ClientAuth> {
//         return TokenEndpointClient::ClientAuth{{{"client_secret", secret}}, {secret}};
//       },
//       transport, Clock::Real(), &timers);
//   (*client)->GetToken(context, std::move(done));
#ifndef DEFENDER_ADAPTERS_AUTH_TOKEN_ENDPOINT_H_
#define DEFENDER_ADAPTERS_AUTH_TOKEN_ENDPOINT_H_

#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "adapters/auth/token_credential.h"
#include "adapters/common/clock.h"
#include "adapters/common/scheduler.h"
#include "adapters/http/http_transport.h"

namespace defender::auth {

// kJwtBearerAssertionType is the client_assertion_type of a JWT assertion
// (RFC 7523), used with certificates and federated tokens.
inline constexpr char kJwtBearerAssertionType[] =
    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

// kDefaultAuthorityHost is the commercial cloud's authority.
inline constexpr char kDefaultAuthorityHost[] = "https://login.microsoftonline.com";

// TokenEndpointOptions names the token endpoint and the application.
struct TokenEndpointOptions {
  // https only; "" means kDefaultAuthorityHost.
  std::string authority_host = kDefaultAuthorityHost;
  std::string tenant_id;  // GUID or verified domain name
  std::string client_id;  // the application (client) id
};

// NormalizeTokenEndpointOptions checks `options` and normalizes them in
// place: an https authority without path, query or user info (trailing '/'
// dropped, "" for the default); a tenant id of letters, digits, '.' and '-';
// a non-empty client id (blanks around both ids dropped). Errors are
// INVALID_ARGUMENT (reason INVALID_CONFIGURATION, metadata "setting") naming
// the setting by its environment variable (AZURE_AUTHORITY_HOST,
// AZURE_TENANT_ID, AZURE_CLIENT_ID), never its value. Idempotent.
absl::Status NormalizeTokenEndpointOptions(TokenEndpointOptions& options);

// TokenUrl is the v2 token endpoint of normalized `options`:
// "{authority_host}/{tenant_id}/oauth2/v2.0/token".
std::string TokenUrl(const TokenEndpointOptions& options);

// ConfigurationError is INVALID_ARGUMENT, reason INVALID_CONFIGURATION, with
// the message "{setting} {problem}" and metadata "setting". `problem` must
// not hold the setting's value.
absl::Status ConfigurationError(const std::string& setting, const std::string& problem);

// ParseTokenResponse reads a token endpoint's answer (success or error) into an
// AccessToken or a status, per token_credential.h. Lenient about types:
// `expires_in` (dated from `now`) may be a JSON number or a numeric string;
// without it, `expires_on` (unix seconds, number or string) is used. Unknown
// fields are ignored. Shared by every credential that talks to an Entra-style
// token endpoint.
absl::StatusOr<AccessToken> ParseTokenResponse(const http::HttpResponse& response, absl::Time now);

// TokenEndpointClient sends client-credentials token requests, retrying what
// may succeed on a second try. Credentials hold one and add how the client
// authenticates. Thread-safe.
class TokenEndpointClient {
 public:
  // ClientAuth is how the client authenticates in one request.
  struct ClientAuth {
    // Form fields sent between client_id and scope, e.g.
    // {{"client_secret", secret}} or {{"client_assertion_type",
    // kJwtBearerAssertionType}, {"client_assertion", jwt}}.
    std::vector<std::pair<std::string, std::string>> fields;
    // Values that must never appear in an error (the secret, the assertion):
    // replaced by "[redacted]" in the message and ErrorInfo metadata of any
    // error GetToken returns.
    std::vector<std::string> secrets;
  };

  // ClientAuthSource returns the client-auth fields of one attempt (each
  // retry calls it again, so an assertion can be fresh, or a rotated file
  // read anew), given the token URL and the clock's time. It runs on the
  // caller's thread for the first attempt and on the scheduler's thread for
  // retries, possibly concurrently for different requests, so it must be
  // thread-safe; it runs only while the client exists. Its error ends the
  // request at once, without retries (after redaction; see GetToken), so it
  // must not hold a secret either.
  using ClientAuthSource =
      std::function<absl::StatusOr<ClientAuth>(const std::string& token_url, absl::Time now)>;

  // Create validates `options` (NormalizeTokenEndpointOptions). `transport`,
  // `clock` and `scheduler` (when given) must outlive the client. Without a
  // scheduler, GetToken never retries.
  static absl::StatusOr<std::unique_ptr<TokenEndpointClient>> Create(
      TokenEndpointOptions options, ClientAuthSource client_auth, http::HttpTransport& transport,
      Clock& clock = Clock::Real(), Scheduler* scheduler = nullptr);

  // Ends the retries waiting on the scheduler: their callers get the last
  // error at once, from the destructor, also when the scheduler has just
  // started a retry's task (that task then does nothing). A retry being
  // handed to the transport on another thread is waited for, and an answer
  // the transport gives inside that Send reaches its `done` before the
  // destructor returns. An answer to a request already sent is still
  // delivered to its `done` later, without further retries. So every `done`
  // is called exactly once. Must not run inside one of this client's
  // callbacks.
  ~TokenEndpointClient();

  TokenEndpointClient(const TokenEndpointClient&) = delete;
  TokenEndpointClient& operator=(const TokenEndpointClient&) = delete;

  // GetToken POSTs the form to TokenUrl() with `context.deadline`, scopes
  // joined by ' ', and calls `done` once, from the transport's callback (or
  // the scheduler's thread, or the destructor; see above). The token's
  // expires_in is counted from when the successful request was sent. Errors
  // are those of token_credential.h, plus whatever the ClientAuthSource
  // returned; no scope is INVALID_ARGUMENT (INVALID_CONFIGURATION).
  //
  // With a scheduler, an attempt that failed with HTTP 500, 502, 503, 504,
  // 408 or 429, or with the transport's UPSTREAM_CONNECT_FAILED,
  // UPSTREAM_CONNECTION_LOST or UPSTREAM_TIMEOUT (a token request is safe to
  // repeat), is retried after the answer's Retry-After when it has one, else
  // after BackoffDelay (200 ms doubling to 5 s, jittered); at most 4 retries,
  // and only while the retry would start at least 100 ms before
  // `context.deadline` (a Retry-After beyond that ends the retries). Every
  // attempt carries `context.deadline`. Rejected credentials (400, 401) and
  // every other error are returned at once. With a scheduler, the error
  // returned is the last attempt's, with ErrorInfo metadata "attempts" (the
  // number of requests sent, e.g. "5"; "0" when the ClientAuthSource failed
  // before the first).
  void GetToken(const TokenRequestContext& context, TokenCredential::Callback done);

  // TokenUrl is where tokens are requested.
  const std::string& TokenUrl() const { return token_url_; }
  // ClientId is the normalized client id.
  const std::string& ClientId() const { return options_.client_id; }

 private:
  // Shared is what the client's requests in flight need, shared with them so
  // that an answer arriving after the client is gone is safe.
  struct Shared;
  class Fetch;

  TokenEndpointClient(TokenEndpointOptions options, ClientAuthSource client_auth,
                      http::HttpTransport& transport, Clock& clock, Scheduler* scheduler);

  const TokenEndpointOptions options_;
  const std::string token_url_;
  std::shared_ptr<Shared> shared_;
};

}  // namespace defender::auth

#endif  // DEFENDER_ADAPTERS_AUTH_TOKEN_ENDPOINT_H_
