// plugin_server.h: the running gRPC server: the ResponseService, the health
// service (overall and "defender.v1.ResponseService") and server reflection,
// on the configured address. Used by main() and by the end-to-end tests.
//
//   absl::StatusOr<std::unique_ptr<PluginServer>> server = PluginServer::Start(config);
//   ... (*server)->port() ...
//   (*server)->Shutdown(absl::Seconds(10));
#ifndef DEFENDER_SERVER_PLUGIN_SERVER_H_
#define DEFENDER_SERVER_PLUGIN_SERVER_H_

#include <memory>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "grpcpp/server.h"
#include "server/config.h"
#include "server/plugin.h"
#include "server/response_service_impl.h"

namespace defender {

// kServiceName is the health-checked name of the API service.
inline constexpr char kServiceName[] = "defender.v1.ResponseService";

// PluginServer owns the plugin's object graph and its gRPC server.
class PluginServer {
 public:
  // Start builds the plugin from `config` and starts serving. It fails when the
  // adapters refuse the configuration or the address cannot be bound.
  static absl::StatusOr<std::unique_ptr<PluginServer>> Start(const PluginConfig& config);

  // Calls Shutdown(zero) if it has not run.
  ~PluginServer();

  // port is the bound port (useful with "127.0.0.1:0").
  int port() const { return port_; }

  // Shutdown marks every service NOT_SERVING, stops accepting calls, lets calls
  // in flight finish for at most `grace`, then cancels the rest. Idempotent.
  void Shutdown(absl::Duration grace);

 private:
  PluginServer() = default;

  std::unique_ptr<Plugin> plugin_;
  std::unique_ptr<ResponseServiceImpl> service_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
  bool shut_down_ = false;
};

}  // namespace defender

#endif  // DEFENDER_SERVER_PLUGIN_SERVER_H_
