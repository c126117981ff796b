// config.h: the plugin's configuration, one typed structure built once at start
// from flags and the environment (flags win), validated before anything runs.
// The rest of the code never reads the environment.
//
//   absl::StatusOr<PluginConfig> config = LoadConfig(argc, argv, ProcessEnvironment());
//   if (!config.ok()) { std::cerr << config.status().message(); return 2; }
//
// Settings (environment variable / flag):
//   AZURE_TENANT_ID        --tenant-id           the Entra tenant (GUID or domain)
//   AZURE_CLIENT_ID        --client-id           the app registration's client id
//   AZURE_CLIENT_SECRET    --client-secret       its secret (or --client-secret-file)
//   AZURE_AUTHORITY_HOST   --authority-host      login authority (default per region)
//   DEFENDER_REGION        --region              global, us, eu, uk, au, swa, ina, aea,
//                                                gcc, gcc-high, dod (default global)
//   DEFENDER_API_URL       --api-url             API base URL override
//   DEFENDER_SCOPE         --scope               token scope override
//   DEFENDER_CA_FILE       --ca-file             CA bundle trusted for all HTTPS calls
//   DEFENDER_DEFAULT_TIMEOUT_SECONDS --default-timeout-seconds  bound of a call
//                                                without a gRPC deadline (default 30)
//   DEFENDER_RATE_PER_MINUTE --rate-per-minute   requests per minute per tenant and
//                                                API (default 100; 0 = no limit)
//   DEFENDER_RATE_PER_HOUR   --rate-per-hour     the same per hour (default 1500)
//   DEFENDER_CONFIG_FILE   --config FILE         tenants from a file (config_file.h);
//                                                then the AZURE_* tenant settings are unused
//   (flag only)            --listen HOST:PORT    default 127.0.0.1:50051; a non-loopback
//                                                address needs TLS or --insecure-listen
//   DEFENDER_TLS_CERT      --tls-cert FILE       the listener's certificate chain (PEM)
//   DEFENDER_TLS_KEY       --tls-key FILE        its private key (PEM)
//   DEFENDER_CLIENT_CA     --client-ca FILE      mutual TLS: CAs of the client certificates
//   (flag only)            --insecure-listen     plaintext on a non-loopback address
//   (flag only)            --shutdown-grace-seconds  in-flight calls' time at SIGTERM
//   (flag only)            --port-file FILE      write the bound port there once serving
//   (flag only)            --go-plugin           go-plugin mode (server/go_plugin.h; also
//                                                when DEFENDER_PLUGIN_MAGIC_COOKIE is set)
// A missing or invalid setting is INVALID_ARGUMENT naming the setting (never
// the value of a secret).
#ifndef DEFENDER_SERVER_CONFIG_H_
#define DEFENDER_SERVER_CONFIG_H_

#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/types/optional.h"
#include "adapters/region/region.h"
#include "server/log.h"

namespace defender {

// kDefaultTenantName names the tenant configured from the environment; an
// empty `tenant` in a request means this one.
inline constexpr char kDefaultTenantName[] = "default";

// CredentialConfig is one way of getting a tenant's tokens.
struct CredentialConfig {
  enum class Kind { kClientSecret, kClientCertificate, kWorkloadIdentity, kManagedIdentity };
  Kind kind = Kind::kClientSecret;
  std::string client_id;             // the app registration (or user-assigned identity)
  std::string client_secret;         // kClientSecret; never logged
  std::string certificate_path;      // kClientCertificate: PEM with key and certificate
  std::string certificate_password;  // kClientCertificate, for an encrypted key; never logged
  std::string signing_algorithm = "PS256";  // kClientCertificate: "PS256" or "RS256"
  std::string token_file;            // kWorkloadIdentity: the federated token file
};

// KindName names a credential kind for messages ("client secret", ...).
const char* KindName(CredentialConfig::Kind kind);

// TenantConfig is one Defender tenant the plugin acts on.
struct TenantConfig {
  std::string name;       // what requests put in `tenant`
  std::string tenant_id;  // the Entra tenant ("" only with a managed identity)
  // Tried in order; the first that gives a token is kept (a chain of one
  // when the tenant comes from a config file).
  std::vector<CredentialConfig> credentials;
  region::Endpoints endpoints;
  int rate_per_minute = -2;  // -2: the plugin's; 0: off; else this tenant's
  int rate_per_hour = -2;
};

// PluginConfig is everything the server needs to start.
struct PluginConfig {
  bool help_requested = false;  // --help: print Usage() and exit 0
  std::string listen = "127.0.0.1:50051";
  // The listener's TLS (PEM texts; all "" = plaintext): certificate chain and
  // key (--tls-cert, --tls-key), and the CAs whose client certificates are
  // required (--client-ca; "" = no client certificate asked).
  std::string tls_cert_pem, tls_key_pem, client_ca_pem;
  // Their files, read again every tls_reload_interval while serving: a
  // renewed certificate, key or CA (cert-manager, certbot) is served with no
  // restart. The pair must be replaced atomically (gRPC 1.51 serves a
  // mismatched pair, which fails every handshake until it agrees again).
  std::string tls_cert_file, tls_key_file, client_ca_file;
  absl::Duration tls_reload_interval = absl::Seconds(60);
  // Plaintext on a non-loopback address was asked for (--insecure-listen).
  bool insecure_listen = false;
  // The caller authorization file (--authz, DEFENDER_AUTHZ_FILE; server/
  // authorization.h); "" = every caller that reaches the listener.
  std::string authz_file;
  std::string port_file;  // "" = none
  // Where Prometheus scrapes GET /metrics (--metrics-listen,
  // DEFENDER_METRICS_LISTEN, HOST:PORT); "" = not served.
  std::string metrics_listen;
  // The log's level and format (--log-level, DEFENDER_LOG_LEVEL;
  // --log-format, DEFENDER_LOG_FORMAT).
  LogOptions log;
  std::string ca_file;  // "" = the system's CA bundle
  absl::Duration default_timeout = absl::Seconds(30);
  int rate_per_minute = 100;  // per tenant and API; 0 = window off
  int rate_per_hour = 1500;
  absl::Duration shutdown_grace = absl::Seconds(10);
  // Where the request journal lives (--state-dir, DEFENDER_STATE_DIR; else
  // systemd's STATE_DIRECTORY, else $XDG_STATE_HOME/defender-plugin, else
  // $HOME/.local/state/defender-plugin).
  std::string state_dir;
  // A request_id is remembered this long (at least 24 hours).
  absl::Duration request_id_window = absl::Hours(24 * 7);
  // Journal entries are kept this long (at least request_id_window).
  absl::Duration journal_retention = absl::Hours(24 * 90);
  // true: every journal commit is fsync'd before its callers go on; false:
  // commits survive a crash of the process, not of the machine (faster).
  bool journal_sync_full = true;
  // WatchMachineAction polls after this pause, growing 1.5x per unchanged
  // answer up to watch_max_poll_interval, back to the start on a change.
  absl::Duration watch_poll_interval = absl::Seconds(2);
  absl::Duration watch_max_poll_interval = absl::Seconds(30);
  // Shared state (--redis-url, DEFENDER_REDIS_URL): "" = none, the budget is
  // this process's; else redis://HOST:PORT[/DB], where every replica takes
  // its rate slots (server/shared_budget.h).
  std::string redis_url;
  // When Redis is unreachable each replica keeps 1/N of the budget, N at
  // least this (--redis-replicas, DEFENDER_REDIS_REPLICAS).
  int redis_replicas = 1;
  std::vector<TenantConfig> tenants;  // tenants[0] is the default tenant
  std::string config_file;            // --config: where tenants came from ("" = environment)
  // Where managed identities get tokens (process-wide, from the environment
  // Azure sets): AZURE_POD_IDENTITY_AUTHORITY_HOST ("" = http://169.254.169.254),
  // and App Service / Container Apps' IDENTITY_ENDPOINT and IDENTITY_HEADER.
  std::string imds_endpoint;
  std::string identity_endpoint;
  std::string identity_header;  // never logged
};

// EnvLookup returns an environment variable's value, or nullopt when unset.
using EnvLookup = std::function<absl::optional<std::string>(const std::string&)>;

// ProcessEnvironment reads the real environment.
EnvLookup ProcessEnvironment();

// LoadConfig builds and validates the configuration.
absl::StatusOr<PluginConfig> LoadConfig(int argc, const char* const* argv, const EnvLookup& env);

// ConfigUsage is the --help text.
std::string ConfigUsage();

// kGoPluginMagicCookieKey is the variable a HashiCorp go-plugin host sets
// (its HandshakeConfig.MagicCookieKey); server/go_plugin.h has the value.
inline constexpr char kGoPluginMagicCookieKey[] = "DEFENDER_PLUGIN_MAGIC_COOKIE";

// GoPluginEnvironment is what a go-plugin host sets when it launches the
// plugin; only server/go_plugin.cc interprets it.
struct GoPluginEnvironment {
  bool requested = false;  // --go-plugin given, or DEFENDER_PLUGIN_MAGIC_COOKIE set
  absl::optional<std::string> magic_cookie;  // DEFENDER_PLUGIN_MAGIC_COOKIE
  absl::optional<std::string> protocol_versions;  // PLUGIN_PROTOCOL_VERSIONS ("1,2")
  std::string min_port, max_port;                 // PLUGIN_MIN_PORT, PLUGIN_MAX_PORT
  std::string client_certificate_pem;             // PLUGIN_CLIENT_CERT (AutoMTLS)
};

// ReadGoPluginEnvironment reads go-plugin's variables and --go-plugin. It
// needs no other setting, so the cookie can be checked before LoadConfig.
GoPluginEnvironment ReadGoPluginEnvironment(int argc, const char* const* argv,
                                            const EnvLookup& env);

}  // namespace defender

#endif  // DEFENDER_SERVER_CONFIG_H_
