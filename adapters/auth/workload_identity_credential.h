// workload_identity_credential.h: Entra workload identity federation (e.g.
// Kubernetes): the platform writes a signed token for the workload to a file,
// and that token is the client assertion of a client-credentials request.
//
//   POST {authority_host}/{tenant_id}/oauth2/v2.0/token
//   grant_type=client_credentials&client_id=...
//   &client_assertion_type=urn:ietf:params:oauth:client-assertion-type:jwt-bearer
//   &client_assertion=<the file's content>&scope=...
//
// The platform rotates the file, so it is read again for every request (and
// every retry). Its settings are the environment's AZURE_TENANT_ID,
// AZURE_CLIENT_ID, AZURE_FEDERATED_TOKEN_FILE and AZURE_AUTHORITY_HOST.
//
// Wrap it in a CachingTokenCredential (token_cache.h). Retries as
// ClientSecretCredential does, given a Scheduler (token_endpoint.h).
//
//   auto credential = WorkloadIdentityCredential::Create(
//       {.tenant_id = tenant, .client_id = client, .token_file = path}, transport);
#ifndef DEFENDER_ADAPTERS_AUTH_WORKLOAD_IDENTITY_CREDENTIAL_H_
#define DEFENDER_ADAPTERS_AUTH_WORKLOAD_IDENTITY_CREDENTIAL_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "adapters/auth/token_credential.h"
#include "adapters/auth/token_endpoint.h"
#include "adapters/common/clock.h"
#include "adapters/common/scheduler.h"
#include "adapters/http/http_transport.h"

namespace defender::auth {

// WorkloadIdentityCredentialOptions names the app registration and the
// federated token's file.
struct WorkloadIdentityCredentialOptions {
  // https only; "" means this default.
  std::string authority_host = kDefaultAuthorityHost;
  std::string tenant_id;   // GUID or verified domain name
  std::string client_id;   // the application (client) id
  std::string token_file;  // AZURE_FEDERATED_TOKEN_FILE
};

// WorkloadIdentityCredential gets tokens with a federated token. Thread-safe.
class WorkloadIdentityCredential final : public TokenCredential {
 public:
  // Create validates the options (NormalizeTokenEndpointOptions,
  // token_endpoint.h; a non-empty token_file, else INVALID_ARGUMENT naming
  // AZURE_FEDERATED_TOKEN_FILE). The file is not read yet: it may appear
  // later. `transport`, `clock` and `scheduler` (when given) must outlive
  // the credential. Without a scheduler, GetToken never retries.
  static absl::StatusOr<std::unique_ptr<WorkloadIdentityCredential>> Create(
      WorkloadIdentityCredentialOptions options, http::HttpTransport& transport,
      Clock& clock = Clock::Real(), Scheduler* scheduler = nullptr);

  // Ends retries waiting on the scheduler, as ~TokenEndpointClient does.
  ~WorkloadIdentityCredential() override;

  // GetToken reads the token file (for each attempt) and sends its content,
  // blanks around it dropped, as the client assertion; see
  // TokenEndpointClient::GetToken for retries and errors. A file that cannot
  // be read or is empty (or only blanks) ends the request without sending
  // it: UNAUTHENTICATED, reason WORKLOAD_IDENTITY_TOKEN_UNREADABLE, naming
  // AZURE_FEDERATED_TOKEN_FILE (never the content).
  void GetToken(const TokenRequestContext& context, Callback done) override;
  std::string Name() const override { return "WorkloadIdentityCredential"; }

  // TokenUrl is where tokens are requested.
  const std::string& TokenUrl() const { return endpoint_->TokenUrl(); }

 private:
  explicit WorkloadIdentityCredential(std::unique_ptr<TokenEndpointClient> endpoint);

  const std::unique_ptr<TokenEndpointClient> endpoint_;
};

}  // namespace defender::auth

#endif  // DEFENDER_ADAPTERS_AUTH_WORKLOAD_IDENTITY_CREDENTIAL_H_
