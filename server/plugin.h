// plugin.h: the object graph behind the service: one timer thread, one rate
// limiter (a budget per tenant and API), one HTTPS transport, and per
// configured tenant a cached token credential and a Defender client.
//
//   absl::StatusOr<std::unique_ptr<Plugin>> plugin = Plugin::Create(config);
//   ResponseServiceImpl service((*plugin)->tenants(), config.default_timeout);
#ifndef DEFENDER_SERVER_PLUGIN_H_
#define DEFENDER_SERVER_PLUGIN_H_

#include <map>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "adapters/auth/token_credential.h"
#include "adapters/common/rate_limiter.h"
#include "adapters/common/scheduler.h"
#include "adapters/defender/defender_client.h"
#include "adapters/http/http_transport.h"
#include "server/config.h"

namespace defender {

// TenantDirectory finds the Defender client of a tenant by name.
class TenantDirectory {
 public:
  virtual ~TenantDirectory() = default;
  // Find returns the client for `name` ("" = the default tenant), or nullptr
  // when no tenant has that name.
  virtual api::DefenderClient* Find(absl::string_view name) const = 0;
};

// Plugin owns the transport, credentials and clients built from a config.
class Plugin final : public TenantDirectory {
 public:
  // Create builds everything; a configuration the adapters refuse (a bad URL,
  // an unreadable CA file) is INVALID_ARGUMENT.
  static absl::StatusOr<std::unique_ptr<Plugin>> Create(const PluginConfig& config);
  ~Plugin() override;

  api::DefenderClient* Find(absl::string_view name) const override;

 private:
  struct Tenant {
    std::unique_ptr<auth::TokenCredential> credential;
    std::unique_ptr<api::DefenderClient> client;
  };
  Plugin() = default;

  std::unique_ptr<Scheduler> scheduler_;
  std::unique_ptr<RateLimiter> limiter_;
  std::unique_ptr<http::HttpTransport> transport_;
  std::string default_tenant_;
  std::map<std::string, Tenant, std::less<>> tenants_;
};

}  // namespace defender

#endif  // DEFENDER_SERVER_PLUGIN_H_
