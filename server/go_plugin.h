// go_plugin.h: go-plugin mode, so a Go program built on HashiCorp's go-plugin
// (plugin.NewClient with AllowedProtocols ProtocolGRPC, optionally AutoMTLS)
// can launch defender-plugin as its subprocess.
//
// The host sets the magic cookie, the protocol versions it speaks, a port range
// and (AutoMTLS) its client certificate in the environment; config.h's
// ReadGoPluginEnvironment reads them. The plugin then
//   - checks the cookie (kMagicCookieKey must equal kMagicCookieValue; else
//     go-plugin's "This binary is a plugin..." message on stderr, exit 1),
//   - picks the app protocol version (kAppProtocolVersion must be listed in
//     PLUGIN_PROTOCOL_VERSIONS, or the list is absent),
//   - listens on 127.0.0.1, on the first free port in PLUGIN_MIN_PORT..
//     PLUGIN_MAX_PORT (any free port when they are unset or both 0),
//   - with PLUGIN_CLIENT_CERT: makes a fresh self-signed ECDSA P-256
//     certificate in memory and serves TLS that requires a client certificate
//     verified by PLUGIN_CLIENT_CERT,
//   - serves plugin.GRPCController (Shutdown = the SIGTERM drain) and
//     plugin.GRPCStdio besides its own services, health name "plugin",
//   - prints the handshake line first (and alone) on stdout:
//       1|1|tcp|127.0.0.1:PORT|grpc[|BASE64-DER-CERT]
//
//   GoPluginEnvironment env = ReadGoPluginEnvironment(argc, argv, ProcessEnvironment());
//   absl::StatusOr<std::unique_ptr<GoPluginMode>> mode =
//       GoPluginMode::Prepare(env, [] { kill(getpid(), SIGTERM); });
//   config.listen = (*mode)->listen();
//   ... PluginServer::Start(config, (*mode)->server_options()) ...
//   std::cout << (*mode)->HandshakeLine(server->port()) << std::flush;
#ifndef DEFENDER_SERVER_GO_PLUGIN_H_
#define DEFENDER_SERVER_GO_PLUGIN_H_

#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "grpcpp/security/server_credentials.h"
#include "server/config.h"
#include "server/plugin_server.h"

namespace defender {

// kGoPluginMagicCookieValue is the value a host's HandshakeConfig puts in
// MagicCookieValue (the key is kGoPluginMagicCookieKey, config.h). A fixed,
// documented constant: it keeps people from starting the binary in this mode
// by accident, it is not a secret.
inline constexpr char kGoPluginMagicCookieValue[] =
    "1730f8505d13f6ce434bcf7df0efeee5e892ba5307a31e4b6af93b6ebe40d0a0";

// kGoPluginCoreProtocolVersion is go-plugin's own protocol (the line's first
// field); kGoPluginAppProtocolVersion is the HandshakeConfig.ProtocolVersion
// of defender-plugin's API (its second field).
inline constexpr int kGoPluginCoreProtocolVersion = 1;
inline constexpr int kGoPluginAppProtocolVersion = 1;

// kGoPluginHealthName is the health service name go-plugin hosts check.
inline constexpr char kGoPluginHealthName[] = "plugin";

// kGoPluginNotAPluginMessage is go-plugin's own message for a wrong or missing
// cookie, printed on stderr before exiting 1.
inline constexpr char kGoPluginNotAPluginMessage[] =
    "This binary is a plugin. These are not meant to be executed directly.\n"
    "Please execute the program that consumes these plugins, which will\n"
    "load any plugins automatically\n";

// CheckGoPluginCookie is OK when the cookie is kGoPluginMagicCookieValue,
// else FAILED_PRECONDITION with kGoPluginNotAPluginMessage.
absl::Status CheckGoPluginCookie(const GoPluginEnvironment& env);

// NegotiateGoPluginVersion returns the app protocol version to serve: 1 when
// PLUGIN_PROTOCOL_VERSIONS is absent or lists 1 (entries that are not numbers
// are ignored, as go-plugin does), else FAILED_PRECONDITION naming both sides.
absl::StatusOr<int> NegotiateGoPluginVersion(const GoPluginEnvironment& env);

// PickGoPluginPort returns the first port in PLUGIN_MIN_PORT..PLUGIN_MAX_PORT
// that 127.0.0.1 can bind now, or 0 (any free port) when both are unset or 0.
// INVALID_ARGUMENT for values that are not ports or a reversed range;
// UNAVAILABLE when no port of the range is free.
absl::StatusOr<int> PickGoPluginPort(const GoPluginEnvironment& env);

// AutoMtlsIdentity is the plugin's one-time TLS identity for AutoMTLS.
struct AutoMtlsIdentity {
  std::string certificate_pem;
  std::string private_key_pem;  // PKCS#8; never logged, never written anywhere
  std::string certificate_der;
};

// GenerateAutoMtlsIdentity makes a fresh ECDSA P-256 key and a self-signed
// certificate for it, as go-plugin's generateCert does: CN "localhost" (O
// "defender-plugin"), SAN DNS:localhost, CA:TRUE, KeyUsage digitalSignature,
// keyEncipherment, keyAgreement, keyCertSign, ExtKeyUsage serverAuth and
// clientAuth, a random 128-bit serial, valid from 30 s ago for 30 years.
absl::StatusOr<AutoMtlsIdentity> GenerateAutoMtlsIdentity();

// AutoMtlsServerCredentials serves `identity` and requires a client
// certificate that verifies against `client_certificate_pem` (the host's
// self-signed PLUGIN_CLIENT_CERT, its only trusted root).
std::shared_ptr<grpc::ServerCredentials> AutoMtlsServerCredentials(
    const AutoMtlsIdentity& identity, const std::string& client_certificate_pem);

// Base64RawStd is `der` in base64's standard alphabet without padding, the
// encoding go-plugin hosts decode (base64.RawStdEncoding). OpenSSL encodes.
std::string Base64RawStd(absl::string_view der);

// GoPluginHandshakeLine is the line printed on stdout, with its newline:
// "1|<app_version>|tcp|<address>|grpc", plus "|<base64 DER>" when
// `certificate_der` is not empty.
std::string GoPluginHandshakeLine(int app_version, absl::string_view address,
                                  absl::string_view certificate_der);

class GoPluginServices;

// GoPluginMode is go-plugin mode once the handshake checks passed: the
// address to listen on, the credentials, the go-plugin services.
class GoPluginMode {
 public:
  // Prepare checks the cookie and the version, picks the port and, when the
  // host sent PLUGIN_CLIENT_CERT, makes the TLS identity. `on_shutdown` runs
  // once when the host calls GRPCController.Shutdown (after the reply is on
  // its way). Errors are for stderr, then exit 1.
  static absl::StatusOr<std::unique_ptr<GoPluginMode>> Prepare(const GoPluginEnvironment& env,
                                                               std::function<void()> on_shutdown);
  ~GoPluginMode();

  // listen is "127.0.0.1:<port>" (port 0: any free port).
  std::string listen() const;

  // NextPort moves to the next port of the range that can be bound now, for
  // when another process took the chosen one between the check and gRPC's
  // bind (hosts start several plugins at once). UNAVAILABLE when none is left
  // or the port was 0 (gRPC's own choice: nothing to retry).
  absl::Status NextPort();

  // auto_mtls says whether the host asked for AutoMTLS.
  bool auto_mtls() const { return !identity_.certificate_der.empty(); }

  // server_options adds the go-plugin services, the "plugin" health name,
  // the AutoMTLS credentials (else the configuration's own listener TLS) and
  // the end of StreamStdio streams at the start of the drain. This object
  // must outlive the server.
  ServerOptions server_options();

  // HandshakeLine is the stdout line for a server bound to `port`.
  std::string HandshakeLine(int port) const;

 private:
  GoPluginMode() = default;

  int app_version_ = kGoPluginAppProtocolVersion;
  int port_ = 0;
  int max_port_ = 0;
  std::string client_certificate_pem_;
  AutoMtlsIdentity identity_;  // empty without AutoMTLS
  std::unique_ptr<GoPluginServices> services_;
};

// GoPluginServices serves plugin.GRPCController and plugin.GRPCStdio.
// StreamStdio streams nothing: defender-plugin writes only the handshake line
// to stdout and its log to stderr, which the host reads from the process's
// stderr pipe already (streaming it too would print each line twice on newer
// hosts); a stream stays open until EndStreams() or the caller cancels, then
// ends with OK.
class GoPluginServices {
 public:
  // `on_shutdown` runs once, at the first GRPCController.Shutdown.
  explicit GoPluginServices(std::function<void()> on_shutdown);
  ~GoPluginServices();

  // services are the two services, to register (owned by this object).
  std::vector<grpc::Service*> services();

  // EndStreams finishes every open StreamStdio with OK, and any later one at
  // once (so the drain does not wait for them).
  void EndStreams();

  // open_streams counts StreamStdio calls not finished yet (for tests).
  int open_streams() const;

 private:
  class Controller;
  class Stdio;
  std::unique_ptr<Controller> controller_;
  std::unique_ptr<Stdio> stdio_;
};

}  // namespace defender

#endif  // DEFENDER_SERVER_GO_PLUGIN_H_
