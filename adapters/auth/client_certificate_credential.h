// client_certificate_credential.h: the OAuth 2.0 client-credentials flow
// (Entra ID v2 endpoint) with a certificate: instead of a secret, each token
// request carries a JWT signed with the certificate's private key.
//
//   POST {authority_host}/{tenant_id}/oauth2/v2.0/token
//   grant_type=client_credentials&client_id=...
//   &client_assertion_type=urn:ietf:params:oauth:client-assertion-type:jwt-bearer
//   &client_assertion=<JWT>&scope=...
//
// The JWT (defender-api.md section 6):
//   header  {"alg": "PS256", "typ": "JWT", "x5t#S256": base64url(SHA-256(cert DER))}
//           or, with CertificateSigning::kRs256,
//           {"alg": "RS256", "typ": "JWT", "x5t": base64url(SHA-1(cert DER))}
//   claims  {"aud": token URL, "iss": client id, "sub": client id, "jti": new GUID,
//            "nbf": now, "iat": now, "exp": now + 600}
//
// Wrap it in a CachingTokenCredential (token_cache.h): on its own it asks the
// token endpoint every time. Retries as ClientSecretCredential does, given a
// Scheduler (token_endpoint.h); every attempt signs a new JWT.
//
//   ClientCertificateCredentialOptions options;
//   options.tenant_id = ...; options.client_id = ...;
//   options.certificate_pem_path = "/etc/defender/app.pem";
//   auto credential = ClientCertificateCredential::Create(options, transport, Clock::Real(),
//                                                         &timers);
#ifndef DEFENDER_ADAPTERS_AUTH_CLIENT_CERTIFICATE_CREDENTIAL_H_
#define DEFENDER_ADAPTERS_AUTH_CLIENT_CERTIFICATE_CREDENTIAL_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "adapters/auth/token_credential.h"
#include "adapters/auth/token_endpoint.h"
#include "adapters/common/clock.h"
#include "adapters/common/scheduler.h"
#include "adapters/http/http_transport.h"

namespace defender::auth {

// CertificateSigning is how the assertion is signed and which thumbprint its
// header names the certificate by.
enum class CertificateSigning {
  // RSA-PSS with SHA-256 (salt as long as the digest, MGF1 with SHA-256);
  // header "x5t#S256" (SHA-256 thumbprint). What Entra recommends.
  kPs256,
  // RSA PKCS#1 v1.5 with SHA-256; header "x5t" (SHA-1 thumbprint). The
  // older form, which Azure SDK for C++ still sends.
  kRs256,
};

// ClientCertificateCredentialOptions names the app registration and its
// certificate.
struct ClientCertificateCredentialOptions {
  // https only; "" means this default.
  std::string authority_host = kDefaultAuthorityHost;
  std::string tenant_id;  // GUID or verified domain name
  std::string client_id;  // the application (client) id
  // A PEM file holding the private key (RSA; PKCS#8 or traditional,
  // encrypted or not) and the certificate registered with the app (the first
  // CERTIFICATE block), in either order.
  std::string certificate_pem_path;
  // The key's password; "" for an unencrypted key. Never logged.
  std::string password;
  CertificateSigning signing = CertificateSigning::kPs256;
};

// ClientCertificateCredential gets tokens with a certificate. Thread-safe.
class ClientCertificateCredential final : public TokenCredential {
 public:
  // Create validates the options (NormalizeTokenEndpointOptions, token_endpoint.h)
  // and loads the key and the certificate. Errors are INVALID_ARGUMENT
  // (reason INVALID_CONFIGURATION, metadata "setting") naming the setting by
  // its environment variable, never its value or the file's content:
  // AZURE_AUTHORITY_HOST, AZURE_TENANT_ID, AZURE_CLIENT_ID;
  // AZURE_CLIENT_CERTIFICATE_PATH when the path is empty, the file unreadable,
  // without a private key or a certificate, the key not RSA or the
  // certificate not the key's; AZURE_CLIENT_CERTIFICATE_PASSWORD when the key
  // is encrypted and the password is missing or wrong. `transport`, `clock`
  // and `scheduler` (when given) must outlive the credential. Without a
  // scheduler, GetToken never retries.
  static absl::StatusOr<std::unique_ptr<ClientCertificateCredential>> Create(
      ClientCertificateCredentialOptions options, http::HttpTransport& transport,
      Clock& clock = Clock::Real(), Scheduler* scheduler = nullptr);

  // Ends retries waiting on the scheduler, as ~TokenEndpointClient does.
  ~ClientCertificateCredential() override;

  // GetToken requests a token with a freshly signed assertion per attempt,
  // and calls `done` once; see TokenEndpointClient::GetToken for retries and
  // errors. Should signing fail (it does not with a loaded RSA key), the
  // error is INTERNAL, reason CLIENT_ASSERTION_FAILED.
  void GetToken(const TokenRequestContext& context, Callback done) override;
  std::string Name() const override { return "ClientCertificateCredential"; }

  // BuildAssertion returns the signed JWT the credential sends at `now` (a
  // new jti each call). For tests and diagnostics; never log its result.
  absl::StatusOr<std::string> BuildAssertion(absl::Time now) const;

  // TokenUrl is where tokens are requested (the assertion's audience).
  const std::string& TokenUrl() const;

 private:
  // Signer holds the loaded key and the header naming the certificate;
  // shared with the token endpoint client's ClientAuthSource.
  class Signer;

  ClientCertificateCredential(std::shared_ptr<const Signer> signer,
                              std::unique_ptr<TokenEndpointClient> endpoint);

  const std::shared_ptr<const Signer> signer_;
  const std::unique_ptr<TokenEndpointClient> endpoint_;
};

}  // namespace defender::auth

#endif  // DEFENDER_ADAPTERS_AUTH_CLIENT_CERTIFICATE_CREDENTIAL_H_
