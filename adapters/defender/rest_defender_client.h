// rest_defender_client.h: DefenderClient over HTTPS (HttpTransport) with tokens
// from a TokenCredential. Request bodies are built with nlohmann::json, never
// by string concatenation.
#ifndef DEFENDER_ADAPTERS_DEFENDER_REST_DEFENDER_CLIENT_H_
#define DEFENDER_ADAPTERS_DEFENDER_REST_DEFENDER_CLIENT_H_

#include <string>

#include "adapters/auth/token_credential.h"
#include "adapters/defender/defender_client.h"
#include "adapters/http/http_transport.h"

namespace defender::api {

// RestDefenderClientOptions says where one tenant's API is.
struct RestDefenderClientOptions {
  std::string api_base_url;  // e.g. "https://api.security.microsoft.com"
  std::string scope;         // e.g. "https://api.securitycenter.microsoft.com/.default"
};

// RestDefenderClient is the production DefenderClient. Thread-safe.
class RestDefenderClient final : public DefenderClient {
 public:
  RestDefenderClient(RestDefenderClientOptions options, auth::TokenCredential& credential,
                     http::HttpTransport& transport);

  void StopAndQuarantineFile(const StopAndQuarantineFileParams& params, absl::Time deadline,
                             ActionCallback done) override;
  void GetMachineAction(const std::string& action_id, absl::Time deadline,
                        ActionCallback done) override;

 private:
  struct Call;
  void Start(std::shared_ptr<Call> call, std::string rejected_token);

  RestDefenderClientOptions options_;
  auth::TokenCredential& credential_;
  http::HttpTransport& transport_;
};

// MapDefenderError turns a non-2xx Defender answer into a status, per
// defender_client.h. Exposed for tests.
absl::Status MapDefenderError(const http::HttpResponse& response);

}  // namespace defender::api

#endif  // DEFENDER_ADAPTERS_DEFENDER_REST_DEFENDER_CLIENT_H_
