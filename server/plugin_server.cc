#include "server/plugin_server.h"

#include <chrono>

#include "absl/strings/str_cat.h"
#include "adapters/common/error.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/health_check_service_interface.h"
#include "grpcpp/security/server_credentials.h"
#include "grpcpp/server_builder.h"

namespace defender {

absl::StatusOr<std::unique_ptr<PluginServer>> PluginServer::Start(const PluginConfig& config) {
  std::unique_ptr<PluginServer> server(new PluginServer());
  // The adapters: one transport, and a credential and client per tenant.
  absl::StatusOr<std::unique_ptr<Plugin>> plugin = Plugin::Create(config);
  if (!plugin.ok()) return plugin.status();
  server->plugin_ = *std::move(plugin);
  server->service_ =
      std::make_unique<ResponseServiceImpl>(*server->plugin_, config.default_timeout);

  // Health and reflection, so generic gRPC tools can list, check and call it.
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();

  grpc::ServerBuilder builder;
  builder.AddListeningPort(config.listen, grpc::InsecureServerCredentials(), &server->port_);
  builder.RegisterService(server->service_.get());
  server->server_ = builder.BuildAndStart();
  if (server->server_ == nullptr || server->port_ == 0) {
    return MakeError(absl::StatusCode::kUnavailable,
                     absl::StrCat("cannot listen on ", config.listen), "LISTEN_FAILED",
                     {{"listen", config.listen}});
  }
  grpc::HealthCheckServiceInterface* health = server->server_->GetHealthCheckService();
  health->SetServingStatus(kServiceName, true);
  health->SetServingStatus(true);
  return server;
}

PluginServer::~PluginServer() { Shutdown(absl::ZeroDuration()); }

void PluginServer::Shutdown(absl::Duration grace) {
  if (shut_down_ || server_ == nullptr) return;
  shut_down_ = true;
  server_->GetHealthCheckService()->SetServingStatus(false);
  server_->Shutdown(absl::ToChronoTime(absl::Now() + grace));
  // Calls still waiting on Defender are completed (CANCELLED) by the transport.
  plugin_.reset();
  server_->Wait();
}

}  // namespace defender
