// client_secret_credential.h: the OAuth 2.0 client-credentials flow (Entra ID
// v2 endpoint) with an application's client secret.
//
//   POST {authority_host}/{tenant_id}/oauth2/v2.0/token
//   grant_type=client_credentials&client_id=...&client_secret=...&scope=...
//
// Wrap it in a CachingTokenCredential (token_cache.h): on its own it asks the
// token endpoint every time.
#ifndef DEFENDER_ADAPTERS_AUTH_CLIENT_SECRET_CREDENTIAL_H_
#define DEFENDER_ADAPTERS_AUTH_CLIENT_SECRET_CREDENTIAL_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "adapters/auth/token_credential.h"
#include "adapters/common/clock.h"
#include "adapters/http/http_transport.h"

namespace defender::auth {

// ClientSecretCredentialOptions names the app registration.
struct ClientSecretCredentialOptions {
  // https only; "" means this default.
  std::string authority_host = "https://login.microsoftonline.com";
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
  // are dropped; the secret is used as given. `transport` and `clock` must
  // outlive the credential.
  static absl::StatusOr<std::unique_ptr<ClientSecretCredential>> Create(
      ClientSecretCredentialOptions options, http::HttpTransport& transport,
      Clock& clock = Clock::Real());

  // GetToken POSTs the form to TokenUrl() with `context.deadline`, scopes
  // joined by ' ', and calls `done` from the transport's callback. The token's
  // expires_in is counted from when the request was sent. An answer arriving
  // after the credential is destroyed is still delivered to `done`.
  void GetToken(const TokenRequestContext& context, Callback done) override;
  std::string Name() const override { return "ClientSecretCredential"; }

  // TokenUrl is where tokens are requested.
  const std::string& TokenUrl() const { return token_url_; }

 private:
  ClientSecretCredential(ClientSecretCredentialOptions options, http::HttpTransport& transport,
                         Clock& clock);

  ClientSecretCredentialOptions options_;
  std::string token_url_;
  http::HttpTransport& transport_;
  Clock& clock_;
};

// ParseTokenResponse reads a token endpoint's answer (success or error) into an
// AccessToken or a status, per token_credential.h. Lenient about types:
// `expires_in` (dated from `now`) may be a JSON number or a numeric string;
// without it, `expires_on` (unix seconds, number or string) is used. Unknown
// fields are ignored. Shared by every credential that talks to an Entra-style
// token endpoint.
absl::StatusOr<AccessToken> ParseTokenResponse(const http::HttpResponse& response, absl::Time now);

}  // namespace defender::auth

#endif  // DEFENDER_ADAPTERS_AUTH_CLIENT_SECRET_CREDENTIAL_H_
