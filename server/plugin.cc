#include "server/plugin.h"

#include "absl/strings/str_cat.h"
#include "adapters/auth/chained_token_credential.h"
#include "adapters/auth/client_certificate_credential.h"
#include "adapters/auth/client_secret_credential.h"
#include "adapters/auth/managed_identity_credential.h"
#include "adapters/auth/workload_identity_credential.h"
#include "adapters/auth/metered_credential.h"
#include "adapters/auth/token_cache.h"
#include "adapters/common/metered_rate_limiter.h"
#include "adapters/common/error.h"
#include "adapters/defender/rest_defender_client.h"
#include "adapters/http/curl_transport.h"
#include "server/log.h"

namespace defender {

absl::StatusOr<std::unique_ptr<PluginRuntime>> PluginRuntime::Create(const PluginConfig& config,
                                                                     Metrics& metrics) {
  std::unique_ptr<PluginRuntime> runtime(new PluginRuntime());
  runtime->metrics_ = &metrics;
  http::CurlTransportOptions transport_options;
  transport_options.ca_file = config.ca_file;
  absl::StatusOr<std::unique_ptr<http::CurlTransport>> transport =
      http::CurlTransport::Create(transport_options);
  if (!transport.ok()) return transport.status();
  runtime->transport_ = *std::move(transport);
  runtime->metered_transport_ =
      std::make_unique<http::MeteredTransport>(*runtime->transport_, metrics);
  if (!config.redis_url.empty()) {
    absl::StatusOr<redis::RedisUrl> url = redis::ParseRedisUrl(config.redis_url);
    if (!url.ok()) return url.status();
    redis::HiredisClientOptions redis_options;
    redis_options.url = *url;
    runtime->redis_ = redis::HiredisClient::Create(redis_options);
    SharedStateOptions shared_options;
    shared_options.min_replicas = config.redis_replicas;
    PluginRuntime* self = runtime.get();
    const std::string where = url->Display();
    metrics.SharedBudgetMode(true);  // before the first heartbeat can report otherwise
    runtime->shared_ = std::make_unique<SharedState>(
        *runtime->redis_, runtime->transport_->scheduler(), shared_options,
        [self, where](bool shared, const absl::Status& why) {
          if (shared) {
            Log(LogLevel::kWarn, "shared budget: Redis is reachable again; the rate budget is "
                                 "shared by every replica again",
                {{"redis", where}});
          } else {
            Log(LogLevel::kError,
                "shared budget DEGRADED: Redis is unreachable; until it is back this replica "
                "keeps a local 1/N share of each rate limit",
                {{"redis", where}, {"error", std::string(why.message())}});
          }
          self->metrics_->SharedBudgetMode(shared);
          absl::MutexLock lock(&self->observer_mu_);
          if (self->observer_) self->observer_(shared);
        });
    Log(LogLevel::kInfo, "shared budget: replicas take their rate slots from Redis",
        {{"redis", where}, {"replicas_assumed_if_down", int64_t{config.redis_replicas}}});
  }
  return runtime;
}

PluginRuntime::~PluginRuntime() {
  // Limiters first (they use the timers and complete their waiters), then
  // the transport with its timers.
  {
    absl::MutexLock lock(&mu_);
    budgets_.clear();
  }
  // The shared state (its heartbeat timer), then the Redis client (it fails
  // what is queued; the callbacks find their owners gone).
  shared_.reset();
  redis_.reset();
  metered_transport_.reset();
  transport_.reset();
}

std::shared_ptr<RateLimiter> PluginRuntime::Budget(const std::string& name, RateLimits limits) {
  absl::MutexLock lock(&mu_);
  BudgetEntry& entry = budgets_[name];
  if (entry.limiter == nullptr || entry.limits.per_minute != limits.per_minute ||
      entry.limits.per_hour != limits.per_hour) {
    entry.limits = limits;
    std::shared_ptr<RateLimiter> limiter;
    if (shared_ != nullptr) {
      limiter = std::make_shared<SharedRateLimiter>(limits, *shared_);
    } else {
      limiter = std::make_shared<SlidingWindowLimiter>(limits, transport_->scheduler());
    }
    entry.limiter = std::make_shared<MeteredRateLimiter>(std::move(limiter), *metrics_);
  }
  return entry.limiter;
}

bool PluginRuntime::shared_budget() const { return shared_ == nullptr || shared_->shared(); }

void PluginRuntime::OnSharedModeChange(absl::AnyInvocable<void(bool shared)> observer) {
  absl::MutexLock lock(&observer_mu_);
  observer_ = std::move(observer);
  // The mode as it is now, under the lock changes are reported under: a
  // change racing with this call is reported after it, never before.
  if (observer_) observer_(shared_budget());
}

namespace {

using CredentialPtr = std::unique_ptr<auth::TokenCredential>;

// Upcast turns a Create() result into a TokenCredential.
template <typename T>
absl::StatusOr<CredentialPtr> Upcast(absl::StatusOr<std::unique_ptr<T>> made) {
  if (!made.ok()) return made.status();
  return CredentialPtr(*std::move(made));
}

absl::StatusOr<CredentialPtr> BuildOne(const CredentialConfig& credential,
                                       const TenantConfig& tenant, const PluginConfig& config,
                                       PluginRuntime& runtime) {
  switch (credential.kind) {
    case CredentialConfig::Kind::kClientSecret: {
      auth::ClientSecretCredentialOptions options;
      options.authority_host = tenant.endpoints.authority_host;
      options.tenant_id = tenant.tenant_id;
      options.client_id = credential.client_id;
      options.client_secret = credential.client_secret;
      return Upcast(auth::ClientSecretCredential::Create(options, runtime.transport(),
                                                         Clock::Real(), &runtime.scheduler()));
    }
    case CredentialConfig::Kind::kClientCertificate: {
      auth::ClientCertificateCredentialOptions options;
      options.authority_host = tenant.endpoints.authority_host;
      options.tenant_id = tenant.tenant_id;
      options.client_id = credential.client_id;
      options.certificate_pem_path = credential.certificate_path;
      options.password = credential.certificate_password;
      options.signing = credential.signing_algorithm == "RS256"
                            ? auth::CertificateSigning::kRs256
                            : auth::CertificateSigning::kPs256;
      return Upcast(auth::ClientCertificateCredential::Create(
          options, runtime.transport(), Clock::Real(), &runtime.scheduler()));
    }
    case CredentialConfig::Kind::kWorkloadIdentity: {
      auth::WorkloadIdentityCredentialOptions options;
      options.authority_host = tenant.endpoints.authority_host;
      options.tenant_id = tenant.tenant_id;
      options.client_id = credential.client_id;
      options.token_file = credential.token_file;
      return Upcast(auth::WorkloadIdentityCredential::Create(
          options, runtime.transport(), Clock::Real(), &runtime.scheduler()));
    }
    case CredentialConfig::Kind::kManagedIdentity: {
      auth::ManagedIdentityCredentialOptions options;
      options.client_id = credential.client_id;
      if (!config.imds_endpoint.empty()) options.imds_endpoint = config.imds_endpoint;
      options.identity_endpoint = config.identity_endpoint;
      options.identity_header = config.identity_header;
      return Upcast(auth::ManagedIdentityCredential::Create(
          options, runtime.transport(), Clock::Real(), &runtime.scheduler()));
    }
  }
  return absl::InternalError("unknown credential kind");
}

}  // namespace

absl::StatusOr<std::unique_ptr<auth::TokenCredential>> BuildCredential(
    const TenantConfig& tenant, const PluginConfig& config, PluginRuntime& runtime) {
  if (tenant.credentials.empty()) {
    return MakeError(absl::StatusCode::kInvalidArgument,
                     absl::StrCat("tenant '", tenant.name, "' has no credential"),
                     "INVALID_CONFIGURATION", {{"tenant", tenant.name}});
  }
  std::vector<CredentialPtr> sources;
  for (const CredentialConfig& credential : tenant.credentials) {
    absl::StatusOr<CredentialPtr> source = BuildOne(credential, tenant, config, runtime);
    if (!source.ok()) return source.status();
    sources.push_back(*std::move(source));
  }
  if (sources.size() == 1) return std::move(sources.front());
  return CredentialPtr(std::make_unique<auth::ChainedTokenCredential>(std::move(sources)));
}

absl::StatusOr<std::shared_ptr<Plugin>> Plugin::Create(const PluginConfig& config,
                                                       PluginRuntime& runtime) {
  std::shared_ptr<Plugin> plugin(new Plugin());
  for (const TenantConfig& tenant : config.tenants) {
    absl::StatusOr<std::unique_ptr<auth::TokenCredential>> credential =
        BuildCredential(tenant, config, runtime);
    if (!credential.ok()) {
      absl::Status error = credential.status();
      AddErrorMetadata(error, "tenant", tenant.name);
      return error;
    }
    Tenant entry;
    RateLimits limits{config.rate_per_minute, config.rate_per_hour};
    if (tenant.rate_per_minute != -2) limits.per_minute = tenant.rate_per_minute;
    if (tenant.rate_per_hour != -2) limits.per_hour = tenant.rate_per_hour;
    entry.budget = runtime.Budget(tenant.name, limits);
    // Each tenant has its own token cache: a token of one tenant is never
    // sent for another.
    // Metered under the cache: the metrics count real token requests.
    entry.credential = std::make_unique<auth::CachingTokenCredential>(
        std::make_unique<auth::MeteredTokenCredential>(*std::move(credential), tenant.name,
                                                       runtime.metrics()));
    api::RestDefenderClientOptions client_options;
    client_options.api_base_url = tenant.endpoints.api_base_url;
    client_options.scope = tenant.endpoints.scope;
    client_options.tenant = tenant.name;
    client_options.limiter = entry.budget.get();
    client_options.scheduler = &runtime.scheduler();
    entry.client = std::make_unique<api::RestDefenderClient>(client_options, *entry.credential,
                                                             runtime.transport());
    if (plugin->default_tenant_.empty()) plugin->default_tenant_ = tenant.name;
    plugin->names_.push_back(tenant.name);
    plugin->tenants_.emplace(tenant.name, std::move(entry));
  }
  return plugin;
}

Plugin::~Plugin() = default;

std::shared_ptr<api::DefenderClient> Plugin::Find(absl::string_view name) const {
  auto it = tenants_.find(name.empty() ? absl::string_view(default_tenant_) : name);
  if (it == tenants_.end()) return nullptr;
  // Shares ownership of this Plugin: a call holding the client keeps its
  // tenant's credential and budget alive across a reload.
  return std::shared_ptr<api::DefenderClient>(shared_from_this(), it->second.client.get());
}

std::vector<std::string> Plugin::Names() const { return names_; }

}  // namespace defender
