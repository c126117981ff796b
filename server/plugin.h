// plugin.h: the object graph behind the service.
//
// PluginRuntime lives as long as the process serves: one timer thread, one
// HTTPS transport, and the rate budgets (one limiter per tenant, kept across
// configuration reloads so a reload never resets a budget). A Plugin is built
// from one configuration: per tenant, a cached token credential and a Defender
// client. A reload builds a new Plugin; calls in flight keep the old one alive
// until they finish.
//
//   auto runtime = PluginRuntime::Create(config);
//   auto plugin = Plugin::Create(config, **runtime);
//   std::shared_ptr<api::DefenderClient> client = (*plugin)->Find("contoso");
#ifndef DEFENDER_SERVER_PLUGIN_H_
#define DEFENDER_SERVER_PLUGIN_H_

#include <map>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "adapters/auth/token_credential.h"
#include "adapters/common/rate_limiter.h"
#include "adapters/common/scheduler.h"
#include "adapters/defender/defender_client.h"
#include "adapters/http/curl_transport.h"
#include "adapters/http/http_transport.h"
#include "adapters/http/metered_transport.h"
#include "adapters/common/metrics.h"
#include "adapters/redis/hiredis_client.h"
#include "server/config.h"
#include "server/rate_limiter.h"
#include "server/shared_budget.h"

namespace defender {

// TenantDirectory finds the Defender client of a tenant by name.
class TenantDirectory {
 public:
  virtual ~TenantDirectory() = default;
  // Find returns the client for `name` ("" = the default tenant), or null
  // when no tenant has that name. The pointer keeps what the client needs
  // alive for as long as it is held.
  virtual std::shared_ptr<api::DefenderClient> Find(absl::string_view name) const = 0;
  // DefaultName is the name of the default tenant.
  virtual std::string DefaultName() const = 0;
};

// PluginRuntime is what outlives configuration reloads. Thread-safe.
class PluginRuntime {
 public:
  // Create starts the transport (trusting config.ca_file), whose loop thread
  // also runs every timer (rate-limit slots, retry pauses, watch polls).
  // Every upstream exchange, rate slot and token request is reported to
  // `metrics`, which must outlive the runtime.
  static absl::StatusOr<std::unique_ptr<PluginRuntime>> Create(const PluginConfig& config,
                                                               Metrics& metrics);
  ~PluginRuntime();

  Scheduler& scheduler() { return transport_->scheduler(); }
  // transport reports each exchange to the metrics.
  http::HttpTransport& transport() { return *metered_transport_; }
  Metrics& metrics() { return *metrics_; }

  // Budget returns the limiter of tenant `name` with `limits`: the same one
  // for the same name and limits, across reloads. With config.redis_url, a
  // SharedRateLimiter (the budget every replica shares), else a local one.
  std::shared_ptr<RateLimiter> Budget(const std::string& name, RateLimits limits);

  // With config.redis_url: whether the budget is shared now (else degraded
  // to local shares); always true without Redis. OnSharedModeChange sets
  // the one observer of changes (called at once with the mode as it is, then
  // from the Redis client's thread on each change); every change is also
  // logged and reported to the metrics.
  bool shared_budget() const;
  bool uses_redis() const { return shared_ != nullptr; }
  // shared_state is the link to Redis (null without config.redis_url).
  SharedState* shared_state() const { return shared_.get(); }
  void OnSharedModeChange(absl::AnyInvocable<void(bool shared)> observer);

 private:
  PluginRuntime() = default;
  Metrics* metrics_ = nullptr;
  std::unique_ptr<http::CurlTransport> transport_;
  std::unique_ptr<http::MeteredTransport> metered_transport_;
  std::unique_ptr<redis::HiredisClient> redis_;
  std::unique_ptr<SharedState> shared_;
  absl::Mutex observer_mu_;
  absl::AnyInvocable<void(bool shared)> observer_ ABSL_GUARDED_BY(observer_mu_);
  absl::Mutex mu_;
  struct BudgetEntry {
    RateLimits limits;
    std::shared_ptr<RateLimiter> limiter;  // metered
  };
  std::map<std::string, BudgetEntry> budgets_ ABSL_GUARDED_BY(mu_);
};

// Plugin holds one configuration's tenants. Immutable once built.
class Plugin final : public TenantDirectory,
                     public std::enable_shared_from_this<Plugin> {
 public:
  // Create builds a credential and a client per tenant; a configuration the
  // adapters refuse (a bad URL, an unreadable certificate) is an error naming
  // the tenant. `runtime` must outlive the Plugin.
  static absl::StatusOr<std::shared_ptr<Plugin>> Create(const PluginConfig& config,
                                                        PluginRuntime& runtime);
  ~Plugin() override;

  std::shared_ptr<api::DefenderClient> Find(absl::string_view name) const override;
  std::string DefaultName() const override { return default_tenant_; }

  // Names lists the tenants, the default first.
  std::vector<std::string> Names() const;

 private:
  struct Tenant {
    std::shared_ptr<RateLimiter> budget;
    std::unique_ptr<auth::TokenCredential> credential;
    std::unique_ptr<api::DefenderClient> client;
  };
  Plugin() = default;

  std::string default_tenant_;
  std::vector<std::string> names_;
  std::map<std::string, Tenant, std::less<>> tenants_;
};

// BuildCredential makes the TokenCredential a tenant's configuration asks for
// (a chain when it lists several), without a cache.
absl::StatusOr<std::unique_ptr<auth::TokenCredential>> BuildCredential(
    const TenantConfig& tenant, const PluginConfig& config, PluginRuntime& runtime);

}  // namespace defender

#endif  // DEFENDER_SERVER_PLUGIN_H_
