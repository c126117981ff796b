#include "adapters/auth/client_secret_credential.h"

#include <memory>
#include <string>
#include <utility>

#include "adapters/auth/token_endpoint.h"

namespace defender::auth {

absl::StatusOr<std::unique_ptr<ClientSecretCredential>> ClientSecretCredential::Create(
    ClientSecretCredentialOptions options, http::HttpTransport& transport, Clock& clock,
    Scheduler* scheduler) {
  TokenEndpointOptions endpoint_options{.authority_host = std::move(options.authority_host),
                                        .tenant_id = std::move(options.tenant_id),
                                        .client_id = std::move(options.client_id)};
  if (absl::Status valid = NormalizeTokenEndpointOptions(endpoint_options); !valid.ok()) {
    return valid;
  }
  // The secret is sent as given: blanks may be part of it.
  if (options.client_secret.empty()) return ConfigurationError("AZURE_CLIENT_SECRET", "is empty");

  auto endpoint = TokenEndpointClient::Create(
      std::move(endpoint_options),
      [secret = std::move(options.client_secret)](
          const std::string& /*token_url*/,
          absl::Time /*now*/) -> absl::StatusOr<TokenEndpointClient::ClientAuth> {
        TokenEndpointClient::ClientAuth auth;
        auth.fields = {{"client_secret", secret}};
        auth.secrets = {secret};
        return auth;
      },
      transport, clock, scheduler);
  if (!endpoint.ok()) return endpoint.status();
  return std::unique_ptr<ClientSecretCredential>(new ClientSecretCredential(*std::move(endpoint)));
}

ClientSecretCredential::ClientSecretCredential(std::unique_ptr<TokenEndpointClient> endpoint)
    : endpoint_(std::move(endpoint)) {}

ClientSecretCredential::~ClientSecretCredential() = default;

void ClientSecretCredential::GetToken(const TokenRequestContext& context, Callback done) {
  endpoint_->GetToken(context, std::move(done));
}

}  // namespace defender::auth
