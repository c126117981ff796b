// client_secret_credential.h: the OAuth 2.0 client-credentials flow (Entra ID
// v2 endpoint) with an application's client secret.
//
//   POST {authority_host}/{tenant_id}/oauth2/v2.0/token
//   grant_type=client_credentials&client_id=...&client_secret=...&scope=...
//
// Wrap it in a CachingTokenCredential (token_cache.h): on its own it asks the
// token endpoint every time. Given a Scheduler, it retries what may succeed on
// a second try (5xx, 408, 429, a lost or refused connection, a timeout) within
// the caller's deadline; the cache then shares that one retrying request. The
// request, its retries and the reading of the answer are TokenEndpointClient's
// (token_endpoint.h), shared with the certificate and workload identity
// credentials.
//
//   TimerThread timers;
//   auto credential = ClientSecretCredential::Create(options, transport, Clock::Real(), &timers);
#ifndef DEFENDER_ADAPTERS_AUTH_CLIENT_SECRET_CREDENTIAL_H_
#define DEFENDER_ADAPTERS_AUTH_CLIENT_SECRET_CREDENTIAL_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "adapters/auth/token_credential.h"
#include "adapters/auth/token_endpoint.h"
#include "adapters/common/clock.h"
#include "adapters/common/scheduler.h"
#include "adapters/http/http_transport.h"

namespace defender::auth {

// ClientSecretCredentialOptions names the app registration.
struct ClientSecretCredentialOptions {
  // https only; "" means this default.
  std::string authority_host = kDefaultAuthorityHost;
  std::string tenant_id;      // GUID or verified domain name
  std::string client_id;      // the application (client) id
  std::string client_secret;  // never logged
};

// ClientSecretCredential gets tokens with a client secret. Thread-safe.
class ClientSecretCredential final : public TokenCredential {
 public:
  // Create validates the options (https authority without path, query or user
  // info; tenant id of letters, digits, '.' and '-'; non-empty client id and
  // secret); errors are INVALID_ARGUMENT (reason INVALID_CONFIGURATION) naming
  // the setting by its environment variable (AZURE_AUTHORITY_HOST,
  // AZURE_TENANT_ID, AZURE_CLIENT_ID, AZURE_CLIENT_SECRET), never its value.
  // Blanks around the tenant and client ids and trailing '/' of the authority
  // are dropped; the secret is used as given. `transport`, `clock` and
  // `scheduler` (when given) must outlive the credential. Without a
  // scheduler, GetToken never retries.
  static absl::StatusOr<std::unique_ptr<ClientSecretCredential>> Create(
      ClientSecretCredentialOptions options, http::HttpTransport& transport,
      Clock& clock = Clock::Real(), Scheduler* scheduler = nullptr);

  // Ends the retries waiting on the scheduler: their callers get the last
  // error at once, from the destructor, also when the scheduler has just
  // started a retry's task (that task then does nothing). A retry being
  // handed to the transport on another thread is waited for, and an answer
  // the transport gives inside that Send reaches its `done` before the
  // destructor returns. An answer to a request already sent is still
  // delivered to its `done` later, without further retries. So every `done`
  // is called exactly once. Must not run inside one of this credential's
  // callbacks.
  ~ClientSecretCredential() override;

  // GetToken POSTs the form to TokenUrl() with `context.deadline`, scopes
  // joined by ' ', and calls `done` once, from the transport's callback (or
  // the scheduler's thread, or the destructor; see above). The token's
  // expires_in is counted from when the successful request was sent.
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
  // number of requests sent, e.g. "5").
  void GetToken(const TokenRequestContext& context, Callback done) override;
  std::string Name() const override { return "ClientSecretCredential"; }

  // TokenUrl is where tokens are requested.
  const std::string& TokenUrl() const { return endpoint_->TokenUrl(); }

 private:
  explicit ClientSecretCredential(std::unique_ptr<TokenEndpointClient> endpoint);

  const std::unique_ptr<TokenEndpointClient> endpoint_;
};

}  // namespace defender::auth

#endif  // DEFENDER_ADAPTERS_AUTH_CLIENT_SECRET_CREDENTIAL_H_
