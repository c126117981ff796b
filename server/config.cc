#include "server/config.h"

#include <arpa/inet.h>

#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "adapters/common/error.h"
#include "adapters/common/file.h"
#include "adapters/redis/redis_client.h"
#include "server/config_file.h"
#include "server/flags.h"

namespace defender {
namespace {

// Values as given on the command line; "" means "not given".
struct RawSettings {
  std::string listen = "127.0.0.1:50051";
  std::string tls_cert, tls_key, client_ca;
  bool insecure_listen = false;
  std::string authz_file;
  std::string port_file;
  std::string metrics_listen, log_level, log_format;
  int tls_reload_seconds = 60;
  bool go_plugin = false;  // read by ReadGoPluginEnvironment; accepted here
  std::string config_file;
  std::string tenant_id, client_id, client_secret, client_secret_file;
  std::string authority_host, region, api_url, scope, ca_file;
  int default_timeout_seconds = 30;
  int rate_per_minute = 100;
  int rate_per_hour = 1500;
  int shutdown_grace_seconds = 10;
  std::string state_dir;
  int request_id_window_hours = 168;
  int journal_retention_days = 90;
  std::string journal_sync;
  int watch_poll_seconds = 2;
  int watch_max_poll_seconds = 30;
  std::string redis_url;
  int redis_replicas = 1;
};

void RegisterFlags(FlagParser& flags, RawSettings& raw) {
  flags.AddString("listen", &raw.listen, "address to serve gRPC on", "HOST:PORT");
  flags.AddString("tls-cert", &raw.tls_cert,
                  "serve TLS with this PEM certificate chain (DEFENDER_TLS_CERT; with --tls-key)",
                  "FILE");
  flags.AddString("tls-key", &raw.tls_key,
                  "the PEM private key of --tls-cert (DEFENDER_TLS_KEY)", "FILE");
  flags.AddString("client-ca", &raw.client_ca,
                  "mutual TLS: require client certificates issued by these PEM CAs "
                  "(DEFENDER_CLIENT_CA; needs --tls-cert)",
                  "FILE");
  flags.AddString("authz", &raw.authz_file,
                  "who may act on which tenant: a JSON file of callers (DEFENDER_AUTHZ_FILE; "
                  "default: every caller that reaches the listener)",
                  "FILE");
  flags.AddBool("insecure-listen", &raw.insecure_listen,
                "allow plaintext on a non-loopback --listen address (logged as a warning)");
  flags.AddInt("tls-reload-seconds", &raw.tls_reload_seconds,
               "how often the --tls-cert, --tls-key and --client-ca files are checked for "
               "renewed ones (DEFENDER_TLS_RELOAD_SECONDS; 60)");
  flags.AddString("metrics-listen", &raw.metrics_listen,
                  "serve Prometheus metrics on http://HOST:PORT/metrics (DEFENDER_METRICS_LISTEN; "
                  "off by default)",
                  "HOST:PORT");
  flags.AddString("log-level", &raw.log_level,
                  "lowest level logged (DEFENDER_LOG_LEVEL; info)", "debug|info|warn|error");
  flags.AddString("log-format", &raw.log_format,
                  "json: one JSON object per line, hclog's keys; text: for a terminal "
                  "(DEFENDER_LOG_FORMAT; json)",
                  "json|text");
  flags.AddString("port-file", &raw.port_file,
                  "write the bound port to FILE once serving (for --listen HOST:0)", "FILE");
  flags.AddBool("go-plugin", &raw.go_plugin,
                "serve as a HashiCorp go-plugin subprocess (also when "
                "DEFENDER_PLUGIN_MAGIC_COOKIE is set); see README");
  flags.AddString("config", &raw.config_file,
                  "tenants from this JSON file (DEFENDER_CONFIG_FILE); see README", "FILE");
  flags.AddString("tenant-id", &raw.tenant_id, "Entra tenant id (AZURE_TENANT_ID)", "ID");
  flags.AddString("client-id", &raw.client_id, "app (client) id (AZURE_CLIENT_ID)", "ID");
  flags.AddString("client-secret", &raw.client_secret,
                  "client secret (AZURE_CLIENT_SECRET; prefer the variable or a file)", "SECRET");
  flags.AddString("client-secret-file", &raw.client_secret_file,
                  "file holding the client secret", "FILE");
  flags.AddString("authority-host", &raw.authority_host,
                  "login authority (AZURE_AUTHORITY_HOST; default per region)", "URL");
  flags.AddString("region", &raw.region,
                  "global, us, eu, uk, au, swa, ina, aea, gcc, gcc-high, dod (DEFENDER_REGION)",
                  "NAME");
  flags.AddString("api-url", &raw.api_url, "Defender API base URL (DEFENDER_API_URL)", "URL");
  flags.AddString("scope", &raw.scope, "token scope (DEFENDER_SCOPE; default per region)",
                  "SCOPE");
  flags.AddString("ca-file", &raw.ca_file,
                  "CA bundle trusted for every HTTPS call (DEFENDER_CA_FILE)", "FILE");
  flags.AddInt("default-timeout-seconds", &raw.default_timeout_seconds,
               "bound of a call without a deadline (DEFENDER_DEFAULT_TIMEOUT_SECONDS; 30)");
  flags.AddInt("rate-per-minute", &raw.rate_per_minute,
               "Defender requests a minute per tenant and API (DEFENDER_RATE_PER_MINUTE; 0 = off)");
  flags.AddInt("rate-per-hour", &raw.rate_per_hour,
               "Defender requests an hour per tenant and API (DEFENDER_RATE_PER_HOUR; 0 = off)");
  flags.AddInt("shutdown-grace-seconds", &raw.shutdown_grace_seconds,
               "time in-flight calls get to finish at SIGTERM/SIGINT");
  flags.AddString("state-dir", &raw.state_dir,
                  "directory of the request journal (DEFENDER_STATE_DIR; default "
                  "$STATE_DIRECTORY or ~/.local/state/defender-plugin)",
                  "DIR");
  flags.AddInt("request-id-window-hours", &raw.request_id_window_hours,
               "how long a request_id is remembered (DEFENDER_REQUEST_ID_WINDOW_HOURS; 168, "
               "at least 24)");
  flags.AddInt("journal-retention-days", &raw.journal_retention_days,
               "how long journal entries are kept (DEFENDER_JOURNAL_RETENTION_DAYS; 90)");
  flags.AddString("journal-sync", &raw.journal_sync,
                  "full: each journal commit is fsync'd (survives power loss); normal: survives "
                  "a crash of the plugin, not of the machine, and is faster "
                  "(DEFENDER_JOURNAL_SYNC; full)",
                  "full|normal");
  flags.AddInt("watch-poll-seconds", &raw.watch_poll_seconds,
               "first pause between WatchMachineAction polls (DEFENDER_WATCH_POLL_SECONDS; 2)");
  flags.AddInt("watch-max-poll-seconds", &raw.watch_max_poll_seconds,
               "longest pause between polls (DEFENDER_WATCH_MAX_POLL_SECONDS; 30)");
  flags.AddString("redis-url", &raw.redis_url,
                  "replicas share the rate budget through this Redis (DEFENDER_REDIS_URL; "
                  "default: none, the budget is this process's own)",
                  "redis://HOST:PORT[/DB]");
  flags.AddInt("redis-replicas", &raw.redis_replicas,
               "the fewest replicas to assume when Redis is unreachable: each then keeps "
               "1/N of the budget (DEFENDER_REDIS_REPLICAS; 1, or the most seen alive)");
}

// DefaultStateDir is where the journal lives when nothing says otherwise.
std::string DefaultStateDir(const EnvLookup& env) {
  if (auto systemd = env("STATE_DIRECTORY"); systemd && !systemd->empty()) {
    // systemd may list several, separated by ':'; the first is ours.
    std::string first = systemd->substr(0, systemd->find(':'));
    if (!first.empty()) return first;
  }
  if (auto xdg = env("XDG_STATE_HOME"); xdg && !xdg->empty()) {
    return absl::StrCat(*xdg, "/defender-plugin");
  }
  if (auto home = env("HOME"); home && !home->empty()) {
    return absl::StrCat(*home, "/.local/state/defender-plugin");
  }
  return "defender-state";
}

absl::Status ConfigError(const std::string& message) {
  return MakeError(absl::StatusCode::kInvalidArgument, message, "INVALID_CONFIGURATION");
}

// Pick returns the flag's value if given, else the environment's, else "".
std::string Pick(const std::string& flag_value, const EnvLookup& env, const std::string& var) {
  if (!flag_value.empty()) return flag_value;
  absl::optional<std::string> value = env(var);
  return value ? *value : std::string();
}

// PickInt sets `out` from the flag if given, else from `var` if set, else
// leaves `value`; INVALID_CONFIGURATION when `var` is not a whole number.
absl::Status PickInt(const FlagParser& flags, const char* flag, int value, const EnvLookup& env,
                     const char* var, int* out) {
  if (!flags.WasSet(flag)) {
    const std::string text = Pick("", env, var);
    if (!text.empty() && !absl::SimpleAtoi(text, &value)) {
      return ConfigError(absl::StrCat(var, " must be a whole number"));
    }
  }
  *out = value;
  return absl::OkStatus();
}

absl::StatusOr<std::string> ReadSecretFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return ConfigError(absl::StrCat("--client-secret-file: cannot read ", path));
  std::stringstream content;
  content << in.rdbuf();
  std::string secret = content.str();
  absl::StripTrailingAsciiWhitespace(&secret);
  return secret;
}

}  // namespace

const char* KindName(CredentialConfig::Kind kind) {
  switch (kind) {
    case CredentialConfig::Kind::kClientSecret:
      return "client secret";
    case CredentialConfig::Kind::kClientCertificate:
      return "client certificate";
    case CredentialConfig::Kind::kWorkloadIdentity:
      return "workload identity";
    case CredentialConfig::Kind::kManagedIdentity:
      return "managed identity";
  }
  return "unknown";
}

EnvLookup ProcessEnvironment() {
  return [](const std::string& name) -> absl::optional<std::string> {
    const char* value = std::getenv(name.c_str());
    if (value == nullptr) return absl::nullopt;
    return std::string(value);
  };
}

GoPluginEnvironment ReadGoPluginEnvironment(int argc, const char* const* argv,
                                            const EnvLookup& env) {
  GoPluginEnvironment plugin;
  plugin.magic_cookie = env(kGoPluginMagicCookieKey);
  plugin.requested = plugin.magic_cookie.has_value();
  for (int i = 1; i < argc; ++i) {
    if (absl::string_view(argv[i]) == "--go-plugin") plugin.requested = true;
  }
  plugin.protocol_versions = env("PLUGIN_PROTOCOL_VERSIONS");
  plugin.min_port = Pick("", env, "PLUGIN_MIN_PORT");
  plugin.max_port = Pick("", env, "PLUGIN_MAX_PORT");
  plugin.client_certificate_pem = Pick("", env, "PLUGIN_CLIENT_CERT");
  return plugin;
}

std::string ConfigUsage() {
  RawSettings raw;
  FlagParser flags("defender-plugin");
  RegisterFlags(flags, raw);
  return flags.Usage();
}

namespace {

// IsLoopbackListen says whether `listen` (HOST:PORT, [V6]:PORT or unix:PATH)
// can only be reached from this machine.
bool IsLoopbackListen(const std::string& listen) {
  if (absl::StartsWith(listen, "unix:") || absl::StartsWith(listen, "unix-abstract:")) return true;
  std::string host = listen.substr(0, listen.rfind(':'));
  if (absl::StartsWith(host, "[") && absl::EndsWith(host, "]")) {
    host = host.substr(1, host.size() - 2);
  }
  if (absl::EqualsIgnoreCase(host, "localhost") || host == "::1") return true;
  in_addr v4{};
  return inet_pton(AF_INET, host.c_str(), &v4) == 1 && (ntohl(v4.s_addr) >> 24) == 127;
}

// ReadPem reads a PEM file named by `flag`; errors name the flag, never the
// content.
absl::StatusOr<std::string> ReadPem(const std::string& path, const std::string& flag,
                                    const std::string& marker) {
  absl::StatusOr<std::string> pem = ReadWholeFile(path);
  if (!pem.ok() || pem->empty()) {
    return ConfigError(absl::StrCat(flag, ": cannot read ", path));
  }
  if (pem->find(marker) == std::string::npos) {
    return ConfigError(absl::StrCat(flag, ": ", path, " holds no PEM ", marker));
  }
  return pem;
}

// LoadListenerTls reads --tls-cert, --tls-key and --client-ca into `config`
// and refuses plaintext on a non-loopback address without --insecure-listen.
absl::Status LoadListenerTls(const RawSettings& raw, const EnvLookup& env, PluginConfig& config) {
  const std::string cert = Pick(raw.tls_cert, env, "DEFENDER_TLS_CERT");
  const std::string key = Pick(raw.tls_key, env, "DEFENDER_TLS_KEY");
  const std::string client_ca = Pick(raw.client_ca, env, "DEFENDER_CLIENT_CA");
  if (cert.empty() != key.empty()) {
    return ConfigError("--tls-cert and --tls-key (DEFENDER_TLS_CERT, DEFENDER_TLS_KEY) go together");
  }
  if (!client_ca.empty() && cert.empty()) {
    return ConfigError("--client-ca (DEFENDER_CLIENT_CA) needs --tls-cert and --tls-key");
  }
  if (!cert.empty()) {
    absl::StatusOr<std::string> cert_pem = ReadPem(cert, "--tls-cert", "CERTIFICATE");
    if (!cert_pem.ok()) return cert_pem.status();
    absl::StatusOr<std::string> key_pem = ReadPem(key, "--tls-key", "PRIVATE KEY");
    if (!key_pem.ok()) return key_pem.status();
    config.tls_cert_pem = *std::move(cert_pem);
    config.tls_key_pem = *std::move(key_pem);
    config.tls_cert_file = cert;
    config.tls_key_file = key;
  }
  if (!client_ca.empty()) {
    absl::StatusOr<std::string> ca_pem = ReadPem(client_ca, "--client-ca", "CERTIFICATE");
    if (!ca_pem.ok()) return ca_pem.status();
    config.client_ca_pem = *std::move(ca_pem);
    config.client_ca_file = client_ca;
  }
  config.insecure_listen = raw.insecure_listen;
  if (cert.empty() && !IsLoopbackListen(config.listen) && !raw.insecure_listen) {
    return ConfigError(absl::StrCat(
        "--listen ", config.listen,
        " is reachable from other machines: serve TLS (--tls-cert, --tls-key, and --client-ca "
        "for mutual TLS), or pass --insecure-listen to serve plaintext anyway"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<PluginConfig> LoadConfig(int argc, const char* const* argv, const EnvLookup& env) {
  RawSettings raw;
  FlagParser flags("defender-plugin");
  RegisterFlags(flags, raw);
  if (absl::Status parsed = flags.Parse(argc, argv); !parsed.ok()) {
    return ConfigError(std::string(parsed.message()));
  }
  PluginConfig config;
  if (flags.HelpRequested()) {
    config.help_requested = true;
    return config;
  }
  if (!flags.positional().empty()) {
    return ConfigError(absl::StrCat("unexpected argument '", flags.positional()[0], "'"));
  }

  config.listen = raw.listen;
  config.port_file = raw.port_file;
  if (config.listen.empty() || config.listen.find(':') == std::string::npos) {
    return ConfigError("--listen must be HOST:PORT");
  }
  if (absl::Status tls = LoadListenerTls(raw, env, config); !tls.ok()) return tls;
  int tls_reload_seconds = 0;
  if (absl::Status picked = PickInt(flags, "tls-reload-seconds", raw.tls_reload_seconds, env,
                                    "DEFENDER_TLS_RELOAD_SECONDS", &tls_reload_seconds);
      !picked.ok()) {
    return picked;
  }
  if (tls_reload_seconds < 1) {
    return ConfigError("DEFENDER_TLS_RELOAD_SECONDS (--tls-reload-seconds) must be >= 1");
  }
  config.tls_reload_interval = absl::Seconds(tls_reload_seconds);
  config.authz_file = Pick(raw.authz_file, env, "DEFENDER_AUTHZ_FILE");
  config.metrics_listen = Pick(raw.metrics_listen, env, "DEFENDER_METRICS_LISTEN");
  if (!config.metrics_listen.empty() && config.metrics_listen.find(':') == std::string::npos) {
    return ConfigError("DEFENDER_METRICS_LISTEN (--metrics-listen) must be HOST:PORT");
  }
  if (std::string level = Pick(raw.log_level, env, "DEFENDER_LOG_LEVEL"); !level.empty()) {
    absl::StatusOr<LogLevel> parsed = ParseLogLevel(level);
    if (!parsed.ok()) {
      return ConfigError(absl::StrCat("DEFENDER_LOG_LEVEL (--log-level) ", parsed.status().message(),
                                      ", not '", absl::CHexEscape(level.substr(0, 32)), "'"));
    }
    config.log.level = *parsed;
  }
  if (std::string format = Pick(raw.log_format, env, "DEFENDER_LOG_FORMAT"); !format.empty()) {
    absl::StatusOr<LogFormat> parsed = ParseLogFormat(format);
    if (!parsed.ok()) {
      return ConfigError(absl::StrCat("DEFENDER_LOG_FORMAT (--log-format) ",
                                      parsed.status().message(), ", not '",
                                      absl::CHexEscape(format.substr(0, 32)), "'"));
    }
    config.log.format = *parsed;
  }
  if (raw.shutdown_grace_seconds < 0) return ConfigError("--shutdown-grace-seconds must be >= 0");
  config.shutdown_grace = absl::Seconds(raw.shutdown_grace_seconds);

  int timeout_seconds = 0;
  if (absl::Status picked = PickInt(flags, "default-timeout-seconds", raw.default_timeout_seconds,
                                    env, "DEFENDER_DEFAULT_TIMEOUT_SECONDS", &timeout_seconds);
      !picked.ok()) {
    return picked;
  }
  if (timeout_seconds <= 0) {
    return ConfigError("DEFENDER_DEFAULT_TIMEOUT_SECONDS (--default-timeout-seconds) must be > 0");
  }
  config.default_timeout = absl::Seconds(timeout_seconds);

  struct Rate {
    const char* flag;
    const char* var;
    int value;
    int* out;
  };
  for (const Rate& rate : {Rate{"rate-per-minute", "DEFENDER_RATE_PER_MINUTE",
                                raw.rate_per_minute, &config.rate_per_minute},
                           Rate{"rate-per-hour", "DEFENDER_RATE_PER_HOUR", raw.rate_per_hour,
                                &config.rate_per_hour}}) {
    int value = 0;
    if (absl::Status picked = PickInt(flags, rate.flag, rate.value, env, rate.var, &value);
        !picked.ok()) {
      return picked;
    }
    if (value < 0) {
      return ConfigError(absl::StrCat(rate.var, " (--", rate.flag, ") must be >= 0 (0 = off)"));
    }
    *rate.out = value;
  }

  config.state_dir = Pick(raw.state_dir, env, "DEFENDER_STATE_DIR");
  if (config.state_dir.empty()) config.state_dir = DefaultStateDir(env);
  int window_hours = 0, retention_days = 0, poll_seconds = 0, max_poll_seconds = 0;
  for (absl::Status picked :
       {PickInt(flags, "request-id-window-hours", raw.request_id_window_hours, env,
                "DEFENDER_REQUEST_ID_WINDOW_HOURS", &window_hours),
        PickInt(flags, "journal-retention-days", raw.journal_retention_days, env,
                "DEFENDER_JOURNAL_RETENTION_DAYS", &retention_days),
        PickInt(flags, "watch-poll-seconds", raw.watch_poll_seconds, env,
                "DEFENDER_WATCH_POLL_SECONDS", &poll_seconds),
        PickInt(flags, "watch-max-poll-seconds", raw.watch_max_poll_seconds, env,
                "DEFENDER_WATCH_MAX_POLL_SECONDS", &max_poll_seconds)}) {
    if (!picked.ok()) return picked;
  }
  if (window_hours < 24) {
    return ConfigError("DEFENDER_REQUEST_ID_WINDOW_HOURS (--request-id-window-hours) must be "
                       "at least 24");
  }
  if (int64_t{retention_days} * 24 < window_hours) {  // (no int overflow for long retentions)
    return ConfigError("DEFENDER_JOURNAL_RETENTION_DAYS (--journal-retention-days) must cover "
                       "the request-id window");
  }
  if (poll_seconds < 1 || max_poll_seconds < poll_seconds) {
    return ConfigError("DEFENDER_WATCH_POLL_SECONDS (--watch-poll-seconds) must be >= 1 and "
                       "DEFENDER_WATCH_MAX_POLL_SECONDS (--watch-max-poll-seconds) >= it");
  }
  const std::string sync = Pick(raw.journal_sync, env, "DEFENDER_JOURNAL_SYNC");
  if (sync == "normal") {
    config.journal_sync_full = false;
  } else if (!sync.empty() && sync != "full") {
    return ConfigError(absl::StrCat("DEFENDER_JOURNAL_SYNC (--journal-sync) must be full or "
                                    "normal, not '", sync, "'"));
  }
  config.redis_url = Pick(raw.redis_url, env, "DEFENDER_REDIS_URL");
  if (!config.redis_url.empty()) {
    if (absl::StatusOr<redis::RedisUrl> url = redis::ParseRedisUrl(config.redis_url); !url.ok()) {
      return ConfigError(absl::StrCat("DEFENDER_REDIS_URL (--redis-url): ", url.status().message()));
    }
  }
  if (absl::Status picked = PickInt(flags, "redis-replicas", raw.redis_replicas, env,
                                    "DEFENDER_REDIS_REPLICAS", &config.redis_replicas);
      !picked.ok()) {
    return picked;
  }
  if (config.redis_replicas < 1) {
    return ConfigError("DEFENDER_REDIS_REPLICAS (--redis-replicas) must be >= 1");
  }
  config.request_id_window = absl::Hours(window_hours);
  config.journal_retention = absl::Hours(24) * retention_days;
  config.watch_poll_interval = absl::Seconds(poll_seconds);
  config.watch_max_poll_interval = absl::Seconds(max_poll_seconds);

  config.ca_file = Pick(raw.ca_file, env, "DEFENDER_CA_FILE");
  if (!config.ca_file.empty() && !std::ifstream(config.ca_file).good()) {
    return ConfigError(absl::StrCat("DEFENDER_CA_FILE (--ca-file): cannot read ", config.ca_file));
  }

  config.imds_endpoint = Pick("", env, "AZURE_POD_IDENTITY_AUTHORITY_HOST");
  config.identity_endpoint = Pick("", env, "IDENTITY_ENDPOINT");
  config.identity_header = Pick("", env, "IDENTITY_HEADER");

  config.config_file = Pick(raw.config_file, env, "DEFENDER_CONFIG_FILE");
  if (!config.config_file.empty()) {
    absl::StatusOr<ConfigFileContents> file = ReadConfigFile(config.config_file, env);
    if (!file.ok()) return file.status();
    config.tenants = std::move(file->tenants);
    return config;
  }

  // No file: one tenant from the environment Azure users know, with Azure
  // Identity's default chain: environment (secret or certificate), then
  // workload identity, then (when neither is configured) managed identity.
  TenantConfig tenant;
  tenant.name = kDefaultTenantName;
  tenant.tenant_id = Pick(raw.tenant_id, env, "AZURE_TENANT_ID");
  const std::string client_id = Pick(raw.client_id, env, "AZURE_CLIENT_ID");
  auto need_app = [&](const std::string& by) -> absl::Status {
    if (tenant.tenant_id.empty()) {
      return ConfigError(absl::StrCat("AZURE_TENANT_ID (--tenant-id) is not set (", by,
                                      " needs it)"));
    }
    if (client_id.empty()) {
      return ConfigError(absl::StrCat("AZURE_CLIENT_ID (--client-id) is not set (", by,
                                      " needs it)"));
    }
    return absl::OkStatus();
  };
  CredentialConfig secret;
  secret.kind = CredentialConfig::Kind::kClientSecret;
  secret.client_id = client_id;
  if (!raw.client_secret_file.empty()) {
    absl::StatusOr<std::string> value = ReadSecretFile(raw.client_secret_file);
    if (!value.ok()) return value.status();
    secret.client_secret = *std::move(value);
  } else {
    secret.client_secret = Pick(raw.client_secret, env, "AZURE_CLIENT_SECRET");
  }
  const std::string certificate_path = Pick("", env, "AZURE_CLIENT_CERTIFICATE_PATH");
  if (!secret.client_secret.empty()) {
    if (absl::Status ok = need_app("AZURE_CLIENT_SECRET"); !ok.ok()) return ok;
    tenant.credentials.push_back(std::move(secret));
  } else if (!certificate_path.empty()) {
    if (absl::Status ok = need_app("AZURE_CLIENT_CERTIFICATE_PATH"); !ok.ok()) return ok;
    CredentialConfig certificate;
    certificate.kind = CredentialConfig::Kind::kClientCertificate;
    certificate.client_id = client_id;
    certificate.certificate_path = certificate_path;
    certificate.certificate_password = Pick("", env, "AZURE_CLIENT_CERTIFICATE_PASSWORD");
    const std::string signing =
        absl::AsciiStrToUpper(Pick("", env, "DEFENDER_CERTIFICATE_SIGNING"));
    if (!signing.empty() && signing != "PS256" && signing != "RS256") {
      return ConfigError("DEFENDER_CERTIFICATE_SIGNING must be PS256 or RS256");
    }
    if (!signing.empty()) certificate.signing_algorithm = signing;
    tenant.credentials.push_back(std::move(certificate));
  }
  const std::string token_file = Pick("", env, "AZURE_FEDERATED_TOKEN_FILE");
  if (!token_file.empty()) {
    if (absl::Status ok = need_app("AZURE_FEDERATED_TOKEN_FILE"); !ok.ok()) return ok;
    CredentialConfig workload;
    workload.kind = CredentialConfig::Kind::kWorkloadIdentity;
    workload.client_id = client_id;
    workload.token_file = token_file;
    tenant.credentials.push_back(std::move(workload));
  }
  // The managed identity comes last, and only when no app credential is
  // configured: after a configured secret, certificate or token file it would
  // only hide a rejected credential behind a slow probe of an IMDS address
  // that off Azure may never answer.
  if (tenant.credentials.empty()) {
    CredentialConfig managed;
    managed.kind = CredentialConfig::Kind::kManagedIdentity;
    managed.client_id = client_id;  // a user-assigned identity, as Azure Identity reads it
    tenant.credentials.push_back(std::move(managed));
  }

  region::EndpointSettings endpoint_settings;
  endpoint_settings.region = Pick(raw.region, env, "DEFENDER_REGION");
  if (endpoint_settings.region.empty()) endpoint_settings.region = "global";
  endpoint_settings.api_url = Pick(raw.api_url, env, "DEFENDER_API_URL");
  endpoint_settings.authority_host = Pick(raw.authority_host, env, "AZURE_AUTHORITY_HOST");
  endpoint_settings.scope = Pick(raw.scope, env, "DEFENDER_SCOPE");
  absl::StatusOr<region::Endpoints> endpoints = region::ResolveEndpoints(endpoint_settings);
  if (!endpoints.ok()) return endpoints.status();
  tenant.endpoints = *std::move(endpoints);

  config.tenants.push_back(std::move(tenant));
  return config;
}

}  // namespace defender
