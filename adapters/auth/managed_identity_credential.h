// managed_identity_credential.h: tokens for the Azure resource the plugin runs
// on (a VM, a scale set, AKS, App Service, Functions, Container Apps), with no
// secret to configure.
//
// Two endpoints, chosen by the options:
//   - IMDS (VMs, scale sets, AKS with pod identity), the default:
//       GET {imds_endpoint}/metadata/identity/oauth2/token
//           ?api-version=2018-02-01&resource=<resource>[&client_id=<id>]
//       Metadata: true
//   - App Service, Functions and Container Apps, when `identity_endpoint` is set
//     (their IDENTITY_ENDPOINT and IDENTITY_HEADER variables):
//       GET {identity_endpoint}?api-version=2019-08-01&resource=<resource>[&client_id=<id>]
//       X-IDENTITY-HEADER: <identity_header>
// `resource` is the requested scope without its "/.default". Both endpoints
// are always reached directly, never through a proxy (HttpRequest::no_proxy).
//
// Reading the environment is the server's configuration's job: it fills the
// options (AZURE_CLIENT_ID, AZURE_POD_IDENTITY_AUTHORITY_HOST,
// IDENTITY_ENDPOINT, IDENTITY_HEADER). Wrap the credential in a
// CachingTokenCredential (token_cache.h): on its own it asks the endpoint
// every time.
//
//   TimerThread timers;
//   ManagedIdentityCredentialOptions options;
//   options.client_id = "11111111-2222-3333-4444-555555555555";  // user-assigned
//   auto credential = ManagedIdentityCredential::Create(options, transport, Clock::Real(),
//                                                       &timers);
//   CachingTokenCredential cached(*std::move(credential));
//
// Errors (absl::Status with an ErrorInfo, adapters/common/error.h; metadata
// "endpoint" names the token URL without the parameters added per request,
// "attempts" the number of requests sent, on every failure after the first
// request):
//   - UNAVAILABLE, reason MANAGED_IDENTITY_UNAVAILABLE: nothing listens at the
//     endpoint (the transport's UPSTREAM_CONNECT_FAILED, or a connection that
//     timed out before the request went out): not running on Azure, or
//     IDENTITY_ENDPOINT is stale. Returned at once, never retried, so that a
//     chain of credentials falls through fast.
//   - UNAUTHENTICATED, reason MANAGED_IDENTITY_REJECTED: HTTP 400, 401 or 403,
//     e.g. "Identity not found" (no identity assigned to the resource, or a
//     wrong client id) or a wrong IDENTITY_HEADER. The message carries the
//     answer's error and description and a hint; metadata "http_status" and
//     "error" when the answer had one.
//   - RESOURCE_EXHAUSTED, reason MANAGED_IDENTITY_THROTTLED: HTTP 429, with a
//     RetryInfo when the answer had a Retry-After.
//   - UNAVAILABLE, reason MANAGED_IDENTITY_ENDPOINT_ERROR: HTTP 404, 410, 5xx
//     or any other unexpected status; metadata "http_status".
//   - INTERNAL, reason BAD_TOKEN_RESPONSE: a success without a usable
//     access_token and expiry.
//   - Other transport faults (UPSTREAM_TIMEOUT, UPSTREAM_CONNECTION_LOST, ...)
//     as the transport reported them, the message prefixed "managed identity
//     token request: ".
//   - INVALID_ARGUMENT, reason INVALID_CONFIGURATION: bad options (from
//     Create, metadata "setting"), or a context without exactly one scope.
// No message or metadata ever holds a token or the identity header's value.
#ifndef DEFENDER_ADAPTERS_AUTH_MANAGED_IDENTITY_CREDENTIAL_H_
#define DEFENDER_ADAPTERS_AUTH_MANAGED_IDENTITY_CREDENTIAL_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "adapters/auth/token_credential.h"
#include "adapters/common/clock.h"
#include "adapters/common/scheduler.h"
#include "adapters/http/http_transport.h"

namespace defender::auth {

// ParseManagedIdentityResponse is how the credential reads one answer of the
// endpoint: a token, or one of the errors above (the transport-level ones
// aside). `app_service` and `user_assigned` say whom the messages name;
// `sent` dates expires_in, `now` a Retry-After date. (For tests/fuzz.)
absl::StatusOr<AccessToken> ParseManagedIdentityResponse(const http::HttpResponse& response,
                                                         bool app_service, bool user_assigned,
                                                         absl::Time sent, absl::Time now);

// ManagedIdentityCredentialOptions says which identity to use and where to ask
// for its tokens.
struct ManagedIdentityCredentialOptions {
  // Client id of a user-assigned identity (AZURE_CLIENT_ID); "" means the
  // resource's system-assigned identity.
  std::string client_id;
  // Base URL of the Instance Metadata Service (http or https, no query); the
  // token path is appended. Azure SDKs take it from
  // AZURE_POD_IDENTITY_AUTHORITY_HOST; tests point it at a local server. ""
  // means this default.
  std::string imds_endpoint = "http://169.254.169.254";
  // App Service / Functions / Container Apps: the full token URL
  // (IDENTITY_ENDPOINT, http or https; a query is kept). When set, it is used
  // instead of IMDS.
  std::string identity_endpoint;
  // The secret sent as X-IDENTITY-HEADER with `identity_endpoint`
  // (IDENTITY_HEADER). Required with `identity_endpoint`, ignored without.
  // Never logged.
  std::string identity_header;
};

// ManagedIdentityCredential gets tokens of an Azure managed identity.
// Thread-safe.
class ManagedIdentityCredential final : public TokenCredential {
 public:
  // Create validates the options: endpoints must be absolute http or https
  // URLs with a host and without user info or fragment (IMDS also without a
  // query); `identity_header` is required with `identity_endpoint` and must
  // not hold a line break. Errors are INVALID_ARGUMENT (reason
  // INVALID_CONFIGURATION) naming the setting by its environment variable
  // (AZURE_POD_IDENTITY_AUTHORITY_HOST, IDENTITY_ENDPOINT, IDENTITY_HEADER,
  // AZURE_CLIENT_ID), never its value. Blanks around every option and trailing
  // '/' of `imds_endpoint` are dropped. `transport`, `clock` and `scheduler`
  // (when given) must outlive the credential. Without a scheduler, GetToken
  // never retries.
  static absl::StatusOr<std::unique_ptr<ManagedIdentityCredential>> Create(
      ManagedIdentityCredentialOptions options, http::HttpTransport& transport,
      Clock& clock = Clock::Real(), Scheduler* scheduler = nullptr);

  // Ends the retries waiting on the scheduler: their callers get the last
  // error at once, from the destructor. A retry being handed to the transport
  // on another thread is waited for. An answer to a request already sent is
  // still delivered to its `done`, without further retries. Must not run
  // inside one of this credential's callbacks.
  ~ManagedIdentityCredential() override;

  // GetToken asks the endpoint for a token for the single scope of `context`
  // (several or none: INVALID_ARGUMENT, no request) and calls `done` once,
  // from the transport's callback (or the scheduler's thread, or the
  // destructor). Every request carries `context.deadline` and no_proxy. The
  // token's expiry is `expires_in` (a number or a numeric string) counted
  // from when the successful request was sent, else `expires_on`: unix
  // seconds (number or string) or App Service's older date form
  // "11/03/2021 20:17:41 +00:00".
  //
  // With a scheduler, HTTP 404, 410 (IMDS is being updated), 429 and 5xx, and
  // the transport's UPSTREAM_CONNECTION_LOST and UPSTREAM_TIMEOUT (once the
  // request may have gone out) are retried after the answer's Retry-After
  // when it has one, else after BackoffDelay (200 ms doubling to 5 s,
  // jittered); at most 4 retries, and only while the retry would start at
  // least 100 ms before `context.deadline`. Everything else, including
  // MANAGED_IDENTITY_UNAVAILABLE, is returned at once.
  void GetToken(const TokenRequestContext& context, Callback done) override;
  std::string Name() const override { return "ManagedIdentityCredential"; }

  // Endpoint is the token URL without the per-request query, e.g.
  // "http://169.254.169.254/metadata/identity/oauth2/token".
  const std::string& Endpoint() const { return endpoint_; }
  // UsesAppService is true when tokens come from `identity_endpoint`, false
  // for IMDS.
  bool UsesAppService() const { return app_service_; }

 private:
  // Shared is what the credential's requests in flight need, shared with
  // them so that an answer arriving after the credential is gone is safe.
  struct Shared;
  class Fetch;

  ManagedIdentityCredential(ManagedIdentityCredentialOptions options, bool app_service,
                            std::string endpoint, http::HttpTransport& transport, Clock& clock,
                            Scheduler* scheduler);

  const ManagedIdentityCredentialOptions options_;
  const bool app_service_;
  const std::string endpoint_;
  std::shared_ptr<Shared> shared_;
};

}  // namespace defender::auth

#endif  // DEFENDER_ADAPTERS_AUTH_MANAGED_IDENTITY_CREDENTIAL_H_
