#include "server/plugin.h"

#include "adapters/auth/client_secret_credential.h"
#include "adapters/auth/token_cache.h"
#include "adapters/defender/rest_defender_client.h"
#include "adapters/http/curl_transport.h"

namespace defender {

absl::StatusOr<std::unique_ptr<Plugin>> Plugin::Create(const PluginConfig& config) {
  std::unique_ptr<Plugin> plugin(new Plugin());
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
        auth::ClientSecretCredential::Create(options, *plugin->transport_);
    if (!secret.ok()) return secret.status();
    Tenant entry;
    entry.credential = std::make_unique<auth::CachingTokenCredential>(*std::move(secret));
    entry.client = std::make_unique<api::RestDefenderClient>(
        api::RestDefenderClientOptions{tenant.endpoints.api_base_url, tenant.endpoints.scope},
        *entry.credential, *plugin->transport_);
    if (plugin->default_tenant_.empty()) plugin->default_tenant_ = tenant.name;
    plugin->tenants_.emplace(tenant.name, std::move(entry));
  }
  return plugin;
}

Plugin::~Plugin() {
  // The transport goes first: it completes what is still in flight while the
  // clients and credentials those callbacks use are still alive.
  transport_.reset();
}

api::DefenderClient* Plugin::Find(absl::string_view name) const {
  auto it = tenants_.find(name.empty() ? absl::string_view(default_tenant_) : name);
  return it == tenants_.end() ? nullptr : it->second.client.get();
}

}  // namespace defender
