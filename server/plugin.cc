#include "server/plugin.h"

#include "adapters/auth/client_secret_credential.h"
#include "adapters/auth/token_cache.h"
#include "adapters/defender/rest_defender_client.h"
#include "adapters/http/curl_transport.h"
#include "server/rate_limiter.h"

namespace defender {

absl::StatusOr<std::unique_ptr<Plugin>> Plugin::Create(const PluginConfig& config) {
  std::unique_ptr<Plugin> plugin(new Plugin());
  plugin->scheduler_ = std::make_unique<TimerThread>();
  plugin->limiter_ = std::make_unique<SlidingWindowLimiter>(
      RateLimits{config.rate_per_minute, config.rate_per_hour}, *plugin->scheduler_);
  http::CurlTransportOptions transport_options;
  transport_options.ca_file = config.ca_file;
  absl::StatusOr<std::unique_ptr<http::CurlTransport>> transport =
      http::CurlTransport::Create(transport_options);
  if (!transport.ok()) return transport.status();
  plugin->transport_ = *std::move(transport);

  for (const TenantConfig& tenant : config.tenants) {
    auth::ClientSecretCredentialOptions options;
    options.authority_host = tenant.endpoints.authority_host;
    options.tenant_id = tenant.tenant_id;
    options.client_id = tenant.client_id;
    options.client_secret = tenant.client_secret;
    absl::StatusOr<std::unique_ptr<auth::ClientSecretCredential>> secret =
        auth::ClientSecretCredential::Create(options, *plugin->transport_, Clock::Real(),
                                             plugin->scheduler_.get());
    if (!secret.ok()) return secret.status();
    Tenant entry;
    entry.credential = std::make_unique<auth::CachingTokenCredential>(*std::move(secret));
    api::RestDefenderClientOptions client_options;
    client_options.api_base_url = tenant.endpoints.api_base_url;
    client_options.scope = tenant.endpoints.scope;
    client_options.tenant = tenant.name;
    client_options.limiter = plugin->limiter_.get();
    client_options.scheduler = plugin->scheduler_.get();
    entry.client = std::make_unique<api::RestDefenderClient>(client_options, *entry.credential,
                                                             *plugin->transport_);
    if (plugin->default_tenant_.empty()) plugin->default_tenant_ = tenant.name;
    plugin->tenants_.emplace(tenant.name, std::move(entry));
  }
  return plugin;
}

Plugin::~Plugin() {
  // By now the gRPC server has shut down, which waits for every call to
  // finish (cancelled calls stop their waits and requests). The limiter goes
  // first as it uses the timers; the transport last, as a timer task may still
  // be sending (its requests then complete with CANCELLED while the clients
  // and credentials are alive).
  limiter_.reset();
  scheduler_.reset();
  transport_.reset();
}

api::DefenderClient* Plugin::Find(absl::string_view name) const {
  auto it = tenants_.find(name.empty() ? absl::string_view(default_tenant_) : name);
  return it == tenants_.end() ? nullptr : it->second.client.get();
}

}  // namespace defender
