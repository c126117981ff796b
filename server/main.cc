// defender-plugin: serves defender.v1.ResponseService over gRPC.
//
//   AZURE_TENANT_ID=... AZURE_CLIENT_ID=... AZURE_CLIENT_SECRET=... defender-plugin
//
// Configuration: server/config.h (flags, environment, --config file). SIGHUP:
// read the configuration again and swap in its tenants without dropping calls
// (a bad new configuration keeps the running one and says why). SIGTERM or
// SIGINT: stop accepting, let in-flight calls finish (bounded), exit 0.
// Launched by a HashiCorp go-plugin host (DEFENDER_PLUGIN_MAGIC_COOKIE set, or
// --go-plugin): go-plugin mode, server/go_plugin.h.
#include <signal.h>
#include <unistd.h>

#include <fstream>
#include <iostream>

#include "absl/strings/str_cat.h"
#include "adapters/common/error.h"
#include "server/config.h"
#include "server/go_plugin.h"
#include "server/log.h"
#include "server/plugin_server.h"

int main(int argc, char** argv) {
  // Block the stop signals in every thread; main() waits for them below.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);

  // go-plugin mode: the host's cookie and protocol version are checked first,
  // as go-plugin does; GRPCController.Shutdown drains like SIGTERM.
  const defender::GoPluginEnvironment go_plugin_env =
      defender::ReadGoPluginEnvironment(argc, argv, defender::ProcessEnvironment());
  std::unique_ptr<defender::GoPluginMode> go_plugin;
  if (go_plugin_env.requested) {
    if (!defender::CheckGoPluginCookie(go_plugin_env).ok()) {
      std::cerr << defender::kGoPluginNotAPluginMessage;
      return 1;
    }
    absl::StatusOr<std::unique_ptr<defender::GoPluginMode>> mode =
        defender::GoPluginMode::Prepare(go_plugin_env, [] { kill(getpid(), SIGTERM); });
    if (!mode.ok()) {
      std::cerr << "defender-plugin: " << mode.status().message() << "\n";
      return 1;
    }
    go_plugin = *std::move(mode);
  }

  // Configuration: flags and environment, validated once.
  absl::StatusOr<defender::PluginConfig> config =
      defender::LoadConfig(argc, argv, defender::ProcessEnvironment());
  if (!config.ok()) {
    std::cerr << "defender-plugin: " << config.status().message() << "\n"
              << "run 'defender-plugin --help' for the settings\n";
    return 2;
  }
  if (config->help_requested) {
    std::cout << defender::ConfigUsage();
    return 0;
  }
  defender::SetLogOptions(config->log);

  // The adapters and the gRPC server.
  defender::ServerOptions server_options;
  if (go_plugin != nullptr) {
    config->listen = go_plugin->listen();
    server_options = go_plugin->server_options();
  }
  absl::StatusOr<std::unique_ptr<defender::PluginServer>> server =
      defender::PluginServer::Start(*config, std::move(server_options));
  // go-plugin: another process may take the checked port before gRPC binds it
  // (hosts start several plugins at once): the next free ports of the range.
  while (go_plugin != nullptr && !server.ok() &&
         defender::ErrorReason(server.status()) == "LISTEN_FAILED" && go_plugin->NextPort().ok()) {
    config->listen = go_plugin->listen();
    server = defender::PluginServer::Start(*config, go_plugin->server_options());
  }
  if (!server.ok()) {
    std::cerr << "defender-plugin: " << server.status().message() << "\n";
    return 1;
  }
  const std::string host = config->listen.substr(0, config->listen.rfind(':'));
  const char* transport = go_plugin != nullptr && go_plugin->auto_mtls()
                              ? "mutual TLS (go-plugin AutoMTLS)"
                          : config->tls_cert_pem.empty()  ? "plaintext"
                          : config->client_ca_pem.empty() ? "TLS"
                                                          : "mutual TLS";
  defender::Log(defender::LogLevel::kInfo,
                absl::StrCat("defender-plugin serving defender.v1.ResponseService on ", host, ":",
                             (*server)->port(), " over ", transport, " (region endpoints: ",
                             config->tenants[0].endpoints.api_base_url, ")"),
                {{"port", int64_t{(*server)->port()}},
                 {"transport", std::string(transport)},
                 {"api_base_url", config->tenants[0].endpoints.api_base_url}});
  if (!config->metrics_listen.empty()) {
    defender::Log(defender::LogLevel::kInfo, "serving Prometheus metrics",
                  {{"metrics_listen", config->metrics_listen},
                   {"metrics_port", int64_t{(*server)->metrics_port()}},
                   {"path", std::string("/metrics")}});
  }
  if (config->insecure_listen && config->tls_cert_pem.empty()) {
    defender::Log(defender::LogLevel::kWarn,
                  absl::StrCat("--insecure-listen: serving plaintext on ", config->listen,
                               "; anyone who can reach it can quarantine files on your devices. "
                               "Serve TLS with --tls-cert/--tls-key/--client-ca"));
  }

  if (!config->port_file.empty()) {
    std::ofstream(config->port_file) << (*server)->port() << "\n";
  }
  if (go_plugin != nullptr) {
    // The handshake line: the first and only thing on stdout.
    std::cout << go_plugin->HandshakeLine((*server)->port()) << std::flush;
  }

  // Wait for SIGTERM/SIGINT, then drain; SIGHUP reloads.
  int signal_number = 0;
  while (sigwait(&stop_signals, &signal_number) == 0 &&
         (signal_number == SIGHUP || (go_plugin != nullptr && signal_number == SIGINT))) {
    if (signal_number == SIGINT) {
      // As go-plugin's own plugins: a Ctrl-C in the host's terminal reaches
      // the plugin too, and the host decides when its plugin stops.
      defender::Log(defender::LogLevel::kInfo,
                    "go-plugin mode: SIGINT ignored (the host stops the plugin)");
      continue;
    }
    absl::StatusOr<defender::PluginConfig> reloaded =
        defender::LoadConfig(argc, argv, defender::ProcessEnvironment());
    absl::Status swapped = reloaded.ok() ? (*server)->Reload(*reloaded) : reloaded.status();
    if (swapped.ok()) {
      defender::SetLogOptions(reloaded->log);
      std::string names;
      for (const auto& tenant : reloaded->tenants) absl::StrAppend(&names, " ", tenant.name);
      defender::Log(defender::LogLevel::kInfo,
                    absl::StrCat("SIGHUP: configuration reloaded; tenants:", names));
    } else {
      defender::Log(defender::LogLevel::kError,
                    absl::StrCat("SIGHUP: reload refused, keeping the running configuration: ",
                                 swapped.message()));
    }
  }
  defender::Log(defender::LogLevel::kInfo,
                absl::StrCat("signal ", signal_number, ": draining for at most ",
                             absl::FormatDuration(config->shutdown_grace)),
                {{"signal", int64_t{signal_number}}});
  (*server)->Shutdown(config->shutdown_grace);
  defender::Log(defender::LogLevel::kInfo, "stopped");
  return 0;
}
