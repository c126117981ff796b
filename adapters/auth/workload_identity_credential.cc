#include "adapters/auth/workload_identity_credential.h"

#include <fstream>
#include <memory>
#include <string>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "adapters/common/error.h"

namespace defender::auth {
namespace {

constexpr char kTokenFileSetting[] = "AZURE_FEDERATED_TOKEN_FILE";
// A federated token is a JWT of a few kilobytes; more than this is not one.
constexpr size_t kMaxTokenFileSize = 1 << 20;

absl::Status Unreadable(const std::string& problem) {
  return MakeError(
      absl::StatusCode::kUnauthenticated,
      absl::StrCat("the federated token file named by ", kTokenFileSetting, " ", problem),
      "WORKLOAD_IDENTITY_TOKEN_UNREADABLE", {{"setting", kTokenFileSetting}});
}

// ReadAssertion returns the trimmed content of `path`.
absl::StatusOr<std::string> ReadAssertion(const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  if (!file) return Unreadable("cannot be read");
  std::string content;
  char chunk[4096];
  while (file.read(chunk, sizeof chunk) || file.gcount() > 0) {
    content.append(chunk, static_cast<size_t>(file.gcount()));
    if (content.size() > kMaxTokenFileSize) return Unreadable("is too large to be a token");
  }
  if (file.bad()) return Unreadable("cannot be read");
  absl::StripAsciiWhitespace(&content);
  if (content.empty()) return Unreadable("is empty");
  return content;
}

}  // namespace

absl::StatusOr<std::unique_ptr<WorkloadIdentityCredential>> WorkloadIdentityCredential::Create(
    WorkloadIdentityCredentialOptions options, http::HttpTransport& transport, Clock& clock,
    Scheduler* scheduler) {
  TokenEndpointOptions endpoint_options{.authority_host = std::move(options.authority_host),
                                        .tenant_id = std::move(options.tenant_id),
                                        .client_id = std::move(options.client_id)};
  if (absl::Status valid = NormalizeTokenEndpointOptions(endpoint_options); !valid.ok()) {
    return valid;
  }
  // The path is used as given: blanks may be part of a file name.
  if (options.token_file.empty()) return ConfigurationError(kTokenFileSetting, "is empty");

  auto endpoint = TokenEndpointClient::Create(
      std::move(endpoint_options),
      [path = std::move(options.token_file)](const std::string& /*token_url*/, absl::Time /*now*/)
          -> absl::StatusOr<TokenEndpointClient::ClientAuth> {
        auto assertion = ReadAssertion(path);
        if (!assertion.ok()) return assertion.status();
        TokenEndpointClient::ClientAuth auth;
        auth.fields = {{"client_assertion_type", kJwtBearerAssertionType},
                       {"client_assertion", *assertion}};
        auth.secrets = {*std::move(assertion)};
        return auth;
      },
      transport, clock, scheduler);
  if (!endpoint.ok()) return endpoint.status();
  return std::unique_ptr<WorkloadIdentityCredential>(
      new WorkloadIdentityCredential(*std::move(endpoint)));
}

WorkloadIdentityCredential::WorkloadIdentityCredential(
    std::unique_ptr<TokenEndpointClient> endpoint)
    : endpoint_(std::move(endpoint)) {}

WorkloadIdentityCredential::~WorkloadIdentityCredential() = default;

void WorkloadIdentityCredential::GetToken(const TokenRequestContext& context, Callback done) {
  endpoint_->GetToken(context, std::move(done));
}

}  // namespace defender::auth
