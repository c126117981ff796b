// plugin_server.h: the running gRPC server: the ResponseService, the health
// service (overall and "defender.v1.ResponseService") and server reflection,
// on the configured address. Used by main() and by the end-to-end tests.
//
//   absl::StatusOr<std::unique_ptr<PluginServer>> server = PluginServer::Start(config);
//   ... (*server)->port() ...
//   (*server)->Reload(new_config);       // SIGHUP: new tenants, calls in flight kept
//   (*server)->Shutdown(absl::Seconds(10));
#ifndef DEFENDER_SERVER_PLUGIN_SERVER_H_
#define DEFENDER_SERVER_PLUGIN_SERVER_H_

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "grpcpp/security/server_credentials.h"
#include "grpcpp/server.h"
#include "adapters/journal/journal.h"
#include "server/authorization.h"
#include "server/config.h"
#include "server/metrics.h"
#include "server/plugin.h"
#include "server/request_ledger.h"
#include "server/shared_requests.h"
#include "server/response_service_impl.h"
#include "server/target_resolver.h"
#include "server/watch_hub.h"

namespace defender {

// kServiceName is the health-checked name of the API service.
inline constexpr char kServiceName[] = "defender.v1.ResponseService";
// kSharedBudgetHealthName is, with --redis-url, SERVING while the rate budget
// is shared in Redis and NOT_SERVING while this replica is degraded to its
// local share (the API itself stays SERVING: calls still work, within the share).
inline constexpr char kSharedBudgetHealthName[] = "redis";

// ServerOptions are what a mode of the binary adds to the server the
// configuration describes (go-plugin mode: server/go_plugin.h).
struct ServerOptions {
  // Served besides the ResponseService, health and reflection (not owned:
  // they must outlive the server).
  std::vector<grpc::Service*> extra_services;
  // Health names reported SERVING besides "" and kServiceName.
  std::vector<std::string> extra_health_names;
  // The listener's credentials; null: the configuration's (TLS or plaintext).
  std::shared_ptr<grpc::ServerCredentials> credentials;
  // Runs first in Shutdown (ends streams that would hold the drain).
  std::function<void()> before_drain;
};

// PluginServer owns the plugin's object graph and its gRPC server.
class PluginServer final : public TenantDirectory {
 public:
  // Start builds the plugin from `config` and starts serving. It fails when the
  // adapters refuse the configuration, the journal in config.state_dir cannot
  // be opened, or the address cannot be bound.
  static absl::StatusOr<std::unique_ptr<PluginServer>> Start(const PluginConfig& config,
                                                             ServerOptions options = {});

  // Calls Shutdown(zero) if it has not run.
  ~PluginServer() override;

  // port is the bound port (useful with "127.0.0.1:0").
  int port() const { return port_; }
  // metrics_port is the bound port of --metrics-listen, 0 without it.
  int metrics_port() const { return metrics_->port(); }
  // metrics are the server's metrics (served on --metrics-listen when set).
  PrometheusMetrics& metrics() { return *metrics_; }

  // Reload swaps in the tenants of `config` and, when the server started
  // with one, the authorization file read again (the listen address, CA file
  // and other process-wide settings keep their start-up values). On an error
  // the running tenants and authorization stay and the error says why. Calls in flight finish with
  // the tenants they started with; budgets of unchanged tenants carry over.
  absl::Status Reload(const PluginConfig& config);

  // Shutdown marks every service NOT_SERVING, stops accepting calls, lets calls
  // in flight finish for at most `grace`, then cancels the rest. Idempotent.
  void Shutdown(absl::Duration grace);

  // TenantDirectory: the current configuration's tenants.
  std::shared_ptr<api::DefenderClient> Find(absl::string_view name) const override;
  std::string DefaultName() const override;

 private:
  PluginServer() = default;

  // Declared first: everything below reports to it until it is destroyed.
  std::unique_ptr<PrometheusMetrics> metrics_;
  std::unique_ptr<PluginRuntime> runtime_;
  std::unique_ptr<journal::Journal> journal_;  // in config.state_dir
  std::unique_ptr<RequestLedger> ledger_;
  // With --redis-url: the request records replicas share (exactly-once).
  std::unique_ptr<SharedRequests> shared_requests_;
  std::unique_ptr<WatchHub> watches_;
  std::unique_ptr<TargetResolver> resolver_;
  std::unique_ptr<Authorizer> authorizer_;  // null: no --authz
  mutable absl::Mutex mu_;
  std::shared_ptr<Plugin> plugin_ ABSL_GUARDED_BY(mu_);
  std::unique_ptr<ResponseServiceImpl> service_;
  std::unique_ptr<grpc::Server> server_;
  ServerOptions options_;
  int port_ = 0;
  bool shut_down_ = false;
};

}  // namespace defender

#endif  // DEFENDER_SERVER_PLUGIN_SERVER_H_
