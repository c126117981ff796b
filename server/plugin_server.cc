#include "server/plugin_server.h"

#include <algorithm>
#include <chrono>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "adapters/common/error.h"
#include "adapters/journal/sqlite_journal.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/health_check_service_interface.h"
#include "grpcpp/security/server_credentials.h"
#include "grpcpp/security/tls_certificate_provider.h"
#include "grpcpp/security/tls_credentials_options.h"
#include "grpcpp/server_builder.h"

namespace defender {

namespace {

// ListenerCredentials: TLS (and mutual TLS) when configured, else plaintext.
// The certificate, key and client CA are served from their files, which
// gRPC's FileWatcherCertificateProvider reads at once and then again every
// tls_reload_interval: a renewed certificate needs no restart. (gRPC 1.51
// does not check that a new key matches its certificate: a renewal must
// replace both at once, as a Kubernetes Secret volume does.) Files without their PEM contents (tests building a config by hand) are
// served from the contents.
std::shared_ptr<grpc::ServerCredentials> ListenerCredentials(const PluginConfig& config) {
  if (config.tls_cert_pem.empty()) return grpc::InsecureServerCredentials();
  const bool mutual = !config.client_ca_pem.empty();
  std::shared_ptr<grpc::experimental::CertificateProviderInterface> provider;
  if (!config.tls_cert_file.empty() && !config.tls_key_file.empty() &&
      (!mutual || !config.client_ca_file.empty())) {
    provider = std::make_shared<grpc::experimental::FileWatcherCertificateProvider>(
        config.tls_key_file, config.tls_cert_file, mutual ? config.client_ca_file : "",
        static_cast<unsigned int>(
            std::max<int64_t>(1, absl::ToInt64Seconds(config.tls_reload_interval))));
  } else {
    provider = std::make_shared<grpc::experimental::StaticDataCertificateProvider>(
        mutual ? config.client_ca_pem : "",
        std::vector<grpc::experimental::IdentityKeyCertPair>{
            {config.tls_key_pem, config.tls_cert_pem}});
  }
  grpc::experimental::TlsServerCredentialsOptions options(provider);
  options.watch_identity_key_cert_pairs();
  if (mutual) options.watch_root_certs();
  options.set_cert_request_type(mutual
                                    ? GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY
                                    : GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE);
  return grpc::experimental::TlsServerCredentials(options);
}

}  // namespace

absl::StatusOr<std::unique_ptr<PluginServer>> PluginServer::Start(const PluginConfig& config,
                                                                 ServerOptions options) {
  std::unique_ptr<PluginServer> server(new PluginServer());
  server->options_ = std::move(options);
  // Metrics first: every part below reports to them.
  server->metrics_ = std::make_unique<PrometheusMetrics>();
  if (!config.metrics_listen.empty()) {
    absl::Status serving = server->metrics_->Serve(config.metrics_listen);
    if (!serving.ok()) return serving;
  }
  // The adapters: timers, one transport and the budgets; a credential and a
  // client per tenant.
  absl::StatusOr<std::unique_ptr<PluginRuntime>> runtime =
      PluginRuntime::Create(config, *server->metrics_);
  if (!runtime.ok()) return runtime.status();
  server->runtime_ = *std::move(runtime);
  absl::StatusOr<std::shared_ptr<Plugin>> plugin = Plugin::Create(config, *server->runtime_);
  if (!plugin.ok()) return plugin.status();
  {
    absl::MutexLock lock(&server->mu_);
    server->plugin_ = *std::move(plugin);
  }
  // The journal (exactly-once and audit) and what serves the action RPCs.
  journal::SqliteJournalOptions journal_options;
  journal_options.retention = config.journal_retention;
  journal_options.sync = config.journal_sync_full ? journal::SqliteJournalOptions::Sync::kFull
                                                  : journal::SqliteJournalOptions::Sync::kNormal;
  absl::StatusOr<std::unique_ptr<journal::SqliteJournal>> journal =
      journal::SqliteJournal::Open(config.state_dir, journal_options);
  if (!journal.ok()) return journal.status();
  server->journal_ = *std::move(journal);
  server->ledger_ = std::make_unique<RequestLedger>(*server->journal_, config.request_id_window);
  if (SharedState* shared = server->runtime_->shared_state(); shared != nullptr) {
    SharedRequestsOptions shared_options;
    shared_options.window = config.request_id_window;
    server->shared_requests_ = std::make_unique<SharedRequests>(*shared, shared_options);
    server->ledger_->ShareWith(server->shared_requests_.get());
  }
  WatchOptions watch_options;
  watch_options.initial_interval = config.watch_poll_interval;
  watch_options.max_interval = config.watch_max_poll_interval;
  server->watches_ =
      std::make_unique<WatchHub>(server->runtime_->scheduler(), watch_options);
  server->resolver_ = std::make_unique<TargetResolver>();
  ServiceParts parts;
  parts.ledger = server->ledger_.get();
  parts.watches = server->watches_.get();
  parts.resolver = server->resolver_.get();
  parts.metrics = server->metrics_.get();
  if (!config.authz_file.empty()) {
    absl::StatusOr<std::unique_ptr<Authorizer>> authorizer = Authorizer::Load(config.authz_file);
    if (!authorizer.ok()) return authorizer.status();
    server->authorizer_ = *std::move(authorizer);
    parts.authorizer = server->authorizer_.get();
  }
  server->service_ =
      std::make_unique<ResponseServiceImpl>(*server, parts, config.default_timeout);

  // Health and reflection, so generic gRPC tools can list, check and call it.
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();

  grpc::ServerBuilder builder;
  builder.AddListeningPort(config.listen,
                           server->options_.credentials != nullptr ? server->options_.credentials
                                                                   : ListenerCredentials(config),
                           &server->port_);
  builder.RegisterService(server->service_.get());
  for (grpc::Service* extra : server->options_.extra_services) builder.RegisterService(extra);
  server->server_ = builder.BuildAndStart();
  if (server->server_ == nullptr || server->port_ == 0) {
    return MakeError(absl::StatusCode::kUnavailable,
                     absl::StrCat("cannot listen on ", config.listen), "LISTEN_FAILED",
                     {{"listen", config.listen}});
  }
  grpc::HealthCheckServiceInterface* health = server->server_->GetHealthCheckService();
  health->SetServingStatus(kServiceName, true);
  for (const std::string& name : server->options_.extra_health_names) {
    health->SetServingStatus(name, true);
  }
  health->SetServingStatus(true);
  if (server->runtime_->uses_redis()) {
    server->runtime_->OnSharedModeChange([health](bool shared) {
      health->SetServingStatus(kSharedBudgetHealthName, shared);
    });
  }
  return server;
}

PluginServer::~PluginServer() { Shutdown(absl::ZeroDuration()); }

std::string PluginServer::DefaultName() const {
  absl::MutexLock lock(&mu_);
  return plugin_ == nullptr ? "" : plugin_->DefaultName();
}

std::shared_ptr<api::DefenderClient> PluginServer::Find(absl::string_view name) const {
  std::shared_ptr<Plugin> plugin;
  {
    absl::MutexLock lock(&mu_);
    plugin = plugin_;
  }
  return plugin == nullptr ? nullptr : plugin->Find(name);
}

absl::Status PluginServer::Reload(const PluginConfig& config) {
  // The authorization file is read again too (rotated tokens, new callers);
  // nothing is swapped unless both it and the tenants are good.
  std::unique_ptr<Authorizer> authorizer;
  if (authorizer_ != nullptr && !config.authz_file.empty()) {
    absl::StatusOr<std::unique_ptr<Authorizer>> loaded = Authorizer::Load(config.authz_file);
    if (!loaded.ok()) return loaded.status();
    authorizer = *std::move(loaded);
  }
  absl::StatusOr<std::shared_ptr<Plugin>> plugin = Plugin::Create(config, *runtime_);
  if (!plugin.ok()) return plugin.status();
  if (authorizer != nullptr) authorizer_->ReplaceWith(std::move(*authorizer));
  std::shared_ptr<Plugin> old;
  {
    absl::MutexLock lock(&mu_);
    old = std::exchange(plugin_, *std::move(plugin));
  }
  // `old` goes when its last call in flight lets go of it.
  return absl::OkStatus();
}

void PluginServer::Shutdown(absl::Duration grace) {
  if (shut_down_ || server_ == nullptr) return;
  shut_down_ = true;
  if (options_.before_drain) options_.before_drain();
  runtime_->OnSharedModeChange(nullptr);  // health stays NOT_SERVING from here
  server_->GetHealthCheckService()->SetServingStatus(false);
  // Watches end now, telling their callers to reconnect elsewhere.
  watches_->Close(MakeError(absl::StatusCode::kUnavailable,
                            "the plugin is shutting down: watch again", "SHUTTING_DOWN"));
  // So do calls waiting on another replica's run of their request_id: their
  // retry, on another replica, waits there instead (this one's own runs go on).
  if (shared_requests_ != nullptr) shared_requests_->Close();
  // Waits for every call: those past the grace are cancelled, which stops
  // their waits, retries and requests.
  server_->Shutdown(absl::ToChronoTime(absl::Now() + grace));
  server_->Wait();
  // Polls first (they use the clients and the timers), then the tenants, the
  // journal (its queued writes are completed), and the runtime.
  watches_.reset();
  {
    absl::MutexLock lock(&mu_);
    plugin_.reset();
  }
  shared_requests_.reset();  // answers claims still waiting, through the ledger
  ledger_.reset();
  journal_.reset();
  runtime_.reset();
}

}  // namespace defender
