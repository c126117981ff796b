#include "server/config.h"

#include <cstdio>
#include <fstream>
#include <map>

#include "adapters/common/error.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace defender {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

class ConfigTest : public ::testing::Test {
 protected:
  absl::StatusOr<PluginConfig> Load(std::vector<std::string> args) {
    args.insert(args.begin(), "defender-plugin");
    std::vector<const char*> argv;
    for (const std::string& arg : args) argv.push_back(arg.c_str());
    std::map<std::string, std::string> env = env_;
    return LoadConfig(static_cast<int>(argv.size()), argv.data(),
                      [env](const std::string& name) -> absl::optional<std::string> {
                        auto it = env.find(name);
                        if (it == env.end()) return absl::nullopt;
                        return it->second;
                      });
  }
  std::map<std::string, std::string> env_ = {{"AZURE_TENANT_ID", "contoso.onmicrosoft.com"},
                                             {"AZURE_CLIENT_ID", "app"},
                                             {"AZURE_CLIENT_SECRET", "s3cret-value"}};
};

TEST_F(ConfigTest, DefaultsToTheGlobalCloud) {
  auto config = Load({});
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->listen, "127.0.0.1:50051");
  ASSERT_EQ(config->tenants.size(), 1u);
  EXPECT_EQ(config->tenants[0].name, "default");
  EXPECT_EQ(config->tenants[0].endpoints.api_base_url, "https://api.security.microsoft.com");
  EXPECT_EQ(config->tenants[0].endpoints.authority_host, "https://login.microsoftonline.com");
  EXPECT_EQ(config->tenants[0].endpoints.scope,
            "https://api.securitycenter.microsoft.com/.default");
  EXPECT_EQ(config->default_timeout, absl::Seconds(30));
}

TEST_F(ConfigTest, RegionAndOverridesComeFromTheEnvironment) {
  env_["DEFENDER_REGION"] = "gcc-high";
  auto config = Load({});
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->tenants[0].endpoints.authority_host, "https://login.microsoftonline.us");
  env_["DEFENDER_API_URL"] = "https://proxy.example.test/defender/";
  config = Load({});
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->tenants[0].endpoints.api_base_url, "https://proxy.example.test/defender");
}

TEST_F(ConfigTest, FlagsWinOverTheEnvironment) {
  env_["DEFENDER_REGION"] = "eu";
  auto config = Load({"--region", "uk", "--listen=0.0.0.0:7000", "--insecure-listen", "--client-id",
                      "other"});
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->tenants[0].endpoints.api_base_url, "https://uk.api.security.microsoft.com");
  EXPECT_EQ(config->tenants[0].credentials[0].client_id, "other");
  EXPECT_EQ(config->listen, "0.0.0.0:7000");
}

TEST_F(ConfigTest, MissingSettingsAreNamed) {
  for (const char* name : {"AZURE_TENANT_ID", "AZURE_CLIENT_ID"}) {
    auto saved = env_;
    env_.erase(name);
    auto config = Load({});
    EXPECT_EQ(config.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(config.status().message(), HasSubstr(name));
    env_ = saved;
  }
}

TEST_F(ConfigTest, TheEnvironmentGivesAzureIdentitysDefaultChain) {
  using Kind = CredentialConfig::Kind;
  auto kinds = [](const PluginConfig& config) {
    std::vector<Kind> kinds;
    for (const auto& credential : config.tenants[0].credentials) kinds.push_back(credential.kind);
    return kinds;
  };
  // A secret alone: no managed identity after it.
  auto config = Load({});
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(kinds(*config), (std::vector<Kind>{Kind::kClientSecret}));
  EXPECT_EQ(config->tenants[0].credentials[0].client_secret, "s3cret-value");
  // A certificate instead of a secret, and workload identity.
  env_.erase("AZURE_CLIENT_SECRET");
  env_["AZURE_CLIENT_CERTIFICATE_PATH"] = "/etc/app.pem";
  env_["AZURE_FEDERATED_TOKEN_FILE"] = "/var/run/token";
  config = Load({});
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(kinds(*config), (std::vector<Kind>{Kind::kClientCertificate, Kind::kWorkloadIdentity}));
  EXPECT_EQ(config->tenants[0].credentials[0].signing_algorithm, "PS256");
  EXPECT_EQ(config->tenants[0].credentials[1].token_file, "/var/run/token");
  // Nothing but the managed identity (no tenant needed).
  env_ = {{"AZURE_CLIENT_ID", "user-assigned"}};
  config = Load({});
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(kinds(*config), (std::vector<Kind>{Kind::kManagedIdentity}));
  EXPECT_EQ(config->tenants[0].credentials[0].client_id, "user-assigned");
}

TEST_F(ConfigTest, InvalidSettingsAreNamedWithoutSecrets) {
  env_["DEFENDER_REGION"] = "mars";
  auto config = Load({});
  EXPECT_THAT(config.status().message(), HasSubstr("DEFENDER_REGION"));
  env_.erase("DEFENDER_REGION");

  env_["DEFENDER_API_URL"] = "http://insecure.example.test";
  config = Load({});
  EXPECT_THAT(config.status().message(), HasSubstr("DEFENDER_API_URL"));
  env_.erase("DEFENDER_API_URL");

  env_["DEFENDER_CA_FILE"] = "/nonexistent/ca.pem";
  config = Load({});
  EXPECT_THAT(config.status().message(), HasSubstr("DEFENDER_CA_FILE"));
  env_.erase("DEFENDER_CA_FILE");

  env_["DEFENDER_SCOPE"] = "https://api.securitycenter.microsoft.com/user_impersonation";
  config = Load({});
  EXPECT_THAT(config.status().message(), HasSubstr("DEFENDER_SCOPE"));
  EXPECT_THAT(config.status().message(), Not(HasSubstr("s3cret-value")));
  env_.erase("DEFENDER_SCOPE");

  EXPECT_THAT(Load({"--bogus"}).status().message(), HasSubstr("--bogus"));
  EXPECT_THAT(Load({"--listen"}).status().message(), HasSubstr("--listen"));
  EXPECT_THAT(Load({"--default-timeout-seconds", "soon"}).status().message(),
              HasSubstr("--default-timeout-seconds"));
}

TEST_F(ConfigTest, HelpIsNotAnError) {
  auto config = Load({"--help"});
  ASSERT_TRUE(config.ok());
  EXPECT_TRUE(config->help_requested);
  EXPECT_THAT(ConfigUsage(), HasSubstr("--ca-file"));
}

}  // namespace
}  // namespace defender

namespace defender {
namespace {

TEST_F(ConfigTest, RateBudgetsDefaultToDefendersAndCanBeChangedOrTurnedOff) {
  auto config = Load({});
  ASSERT_TRUE(config.ok());
  EXPECT_EQ(config->rate_per_minute, 100);
  EXPECT_EQ(config->rate_per_hour, 1500);
  env_["DEFENDER_RATE_PER_MINUTE"] = "0";
  env_["DEFENDER_RATE_PER_HOUR"] = "45";
  config = Load({});
  ASSERT_TRUE(config.ok());
  EXPECT_EQ(config->rate_per_minute, 0);
  EXPECT_EQ(config->rate_per_hour, 45);
  config = Load({"--rate-per-minute", "7"});
  ASSERT_TRUE(config.ok());
  EXPECT_EQ(config->rate_per_minute, 7);
  env_["DEFENDER_RATE_PER_HOUR"] = "-1";
  EXPECT_THAT(Load({}).status().message(), HasSubstr("DEFENDER_RATE_PER_HOUR"));
  env_["DEFENDER_RATE_PER_HOUR"] = "lots";
  EXPECT_THAT(Load({}).status().message(), HasSubstr("DEFENDER_RATE_PER_HOUR"));
}

TEST_F(ConfigTest, StateDirComesFromTheFlagThenTheVariable) {
  env_["HOME"] = "/home/op";
  env_["DEFENDER_STATE_DIR"] = "/var/lib/from-env";
  auto config = Load({});
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->state_dir, "/var/lib/from-env");
  config = Load({"--state-dir", "/srv/from-flag"});
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->state_dir, "/srv/from-flag");
  config = Load({"--state-dir=/srv/other"});
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->state_dir, "/srv/other");
  // An empty variable counts as unset.
  env_["DEFENDER_STATE_DIR"] = "";
  config = Load({});
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->state_dir, "/home/op/.local/state/defender-plugin");
}

TEST_F(ConfigTest, StateDirDefaultsToSystemdThenXdgThenHome) {
  env_["HOME"] = "/home/op";
  env_["XDG_STATE_HOME"] = "/home/op/.xdg-state";
  env_["STATE_DIRECTORY"] = "/var/lib/defender-plugin:/var/lib/other";
  auto config = Load({});
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->state_dir, "/var/lib/defender-plugin");  // systemd's first entry

  env_["STATE_DIRECTORY"] = "/var/lib/only";
  config = Load({});
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->state_dir, "/var/lib/only");

  env_.erase("STATE_DIRECTORY");
  config = Load({});
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->state_dir, "/home/op/.xdg-state/defender-plugin");

  env_["XDG_STATE_HOME"] = "";
  config = Load({});
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->state_dir, "/home/op/.local/state/defender-plugin");

  // The flag and DEFENDER_STATE_DIR come before all of these.
  env_["STATE_DIRECTORY"] = "/var/lib/defender-plugin";
  env_["DEFENDER_STATE_DIR"] = "/explicit";
  config = Load({});
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->state_dir, "/explicit");
}

TEST_F(ConfigTest, JournalSyncIsFullUnlessNormalIsAsked) {
  auto config = Load({});
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_TRUE(config->journal_sync_full);
  config = Load({"--journal-sync", "normal"});
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_FALSE(config->journal_sync_full);
  env_["DEFENDER_JOURNAL_SYNC"] = "normal";
  config = Load({});
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_FALSE(config->journal_sync_full);
  config = Load({"--journal-sync", "full"});  // the flag comes first
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_TRUE(config->journal_sync_full);
  auto refused = Load({"--journal-sync", "off"});
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(refused.status().message(), HasSubstr("--journal-sync"));
  EXPECT_THAT(refused.status().message(), HasSubstr("'off'"));
}

TEST_F(ConfigTest, RequestIdWindowAndJournalRetention) {
  auto config = Load({});
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->request_id_window, absl::Hours(168));
  EXPECT_EQ(config->journal_retention, absl::Hours(24 * 90));

  config = Load({"--request-id-window-hours", "24", "--journal-retention-days", "1"});
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->request_id_window, absl::Hours(24));
  EXPECT_EQ(config->journal_retention, absl::Hours(24));

  // Less than a day is refused.
  for (const char* hours : {"23", "0", "-5"}) {
    auto refused = Load({"--request-id-window-hours", hours});
    EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument) << hours;
    EXPECT_THAT(refused.status().message(), HasSubstr("--request-id-window-hours")) << hours;
  }

  // The journal must keep entries at least as long as the window.
  auto refused = Load({"--request-id-window-hours", "169", "--journal-retention-days", "7"});
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(refused.status().message(), HasSubstr("--journal-retention-days"));
  config = Load({"--request-id-window-hours", "168", "--journal-retention-days", "7"});
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->journal_retention, absl::Hours(168));
  refused = Load({"--request-id-window-hours", "25", "--journal-retention-days", "1"});
  EXPECT_THAT(refused.status().message(), HasSubstr("--journal-retention-days"));
  refused = Load({"--journal-retention-days", "0"});
  EXPECT_THAT(refused.status().message(), HasSubstr("--journal-retention-days"));
  // The default window (a week) against a shorter retention.
  refused = Load({"--journal-retention-days", "6"});
  EXPECT_THAT(refused.status().message(), HasSubstr("--journal-retention-days"));

  // A very long retention is not an overflow.
  config = Load({"--journal-retention-days", "100000000"});
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->journal_retention, absl::Hours(24) * 100000000);
}

TEST_F(ConfigTest, WatchPollBounds) {
  auto config = Load({});
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->watch_poll_interval, absl::Seconds(2));
  EXPECT_EQ(config->watch_max_poll_interval, absl::Seconds(30));

  config = Load({"--watch-poll-seconds", "5", "--watch-max-poll-seconds", "5"});
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->watch_poll_interval, absl::Seconds(5));
  EXPECT_EQ(config->watch_max_poll_interval, absl::Seconds(5));

  config = Load({"--watch-poll-seconds=1", "--watch-max-poll-seconds=600"});
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->watch_poll_interval, absl::Seconds(1));
  EXPECT_EQ(config->watch_max_poll_interval, absl::Seconds(600));

  for (const std::vector<std::string>& bad :
       {std::vector<std::string>{"--watch-poll-seconds", "0"},
        std::vector<std::string>{"--watch-poll-seconds", "-1"},
        std::vector<std::string>{"--watch-poll-seconds", "31"},  // above the default maximum
        std::vector<std::string>{"--watch-max-poll-seconds", "1"},  // below the default start
        std::vector<std::string>{"--watch-poll-seconds", "10", "--watch-max-poll-seconds", "9"}}) {
    auto refused = Load(bad);
    EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument) << bad[1];
    EXPECT_THAT(refused.status().message(), HasSubstr("watch-")) << bad[1];
  }
  EXPECT_THAT(Load({"--watch-poll-seconds", "soon"}).status().message(),
              HasSubstr("--watch-poll-seconds"));
}

TEST_F(ConfigTest, NewSettingsComeFromTheEnvironmentAndFlagsWin) {
  env_["DEFENDER_REQUEST_ID_WINDOW_HOURS"] = "48";
  env_["DEFENDER_JOURNAL_RETENTION_DAYS"] = "30";
  env_["DEFENDER_WATCH_POLL_SECONDS"] = "3";
  env_["DEFENDER_WATCH_MAX_POLL_SECONDS"] = "60";
  auto config = Load({});
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->request_id_window, absl::Hours(48));
  EXPECT_EQ(config->journal_retention, absl::Hours(24 * 30));
  EXPECT_EQ(config->watch_poll_interval, absl::Seconds(3));
  EXPECT_EQ(config->watch_max_poll_interval, absl::Seconds(60));

  config = Load({"--request-id-window-hours", "72", "--journal-retention-days", "3",
                 "--watch-poll-seconds", "4", "--watch-max-poll-seconds", "8"});
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->request_id_window, absl::Hours(72));
  EXPECT_EQ(config->journal_retention, absl::Hours(72));
  EXPECT_EQ(config->watch_poll_interval, absl::Seconds(4));
  EXPECT_EQ(config->watch_max_poll_interval, absl::Seconds(8));

  // Values checked the same way from the environment.
  env_["DEFENDER_REQUEST_ID_WINDOW_HOURS"] = "12";
  EXPECT_THAT(Load({}).status().message(), HasSubstr("DEFENDER_REQUEST_ID_WINDOW_HOURS"));
  env_["DEFENDER_REQUEST_ID_WINDOW_HOURS"] = "800";  // more than DEFENDER_JOURNAL_RETENTION_DAYS
  EXPECT_THAT(Load({}).status().message(), HasSubstr("DEFENDER_JOURNAL_RETENTION_DAYS"));
  env_.erase("DEFENDER_REQUEST_ID_WINDOW_HOURS");
  env_["DEFENDER_WATCH_MAX_POLL_SECONDS"] = "2";  // below DEFENDER_WATCH_POLL_SECONDS
  EXPECT_EQ(Load({}).status().code(), absl::StatusCode::kInvalidArgument);
  env_.erase("DEFENDER_WATCH_MAX_POLL_SECONDS");

  // Not whole numbers: named, INVALID_CONFIGURATION.
  for (const char* var : {"DEFENDER_REQUEST_ID_WINDOW_HOURS", "DEFENDER_JOURNAL_RETENTION_DAYS",
                          "DEFENDER_WATCH_POLL_SECONDS", "DEFENDER_WATCH_MAX_POLL_SECONDS"}) {
    auto saved = env_;
    env_[var] = "a week";
    auto refused = Load({});
    EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument) << var;
    EXPECT_EQ(ErrorReason(refused.status()), "INVALID_CONFIGURATION") << var;
    EXPECT_THAT(refused.status().message(), HasSubstr(var));
    // An empty variable counts as unset.
    env_[var] = "";
    EXPECT_TRUE(Load({}).ok()) << var;
    env_ = saved;
  }
}

TEST_F(ConfigTest, UsageListsTheNewFlags) {
  for (const char* flag : {"--state-dir", "--request-id-window-hours", "--journal-retention-days",
                           "--watch-poll-seconds", "--watch-max-poll-seconds", "--journal-sync",
                           "--tls-cert", "--tls-key", "--client-ca", "--insecure-listen"}) {
    EXPECT_THAT(ConfigUsage(), HasSubstr(flag));
  }
}

}  // namespace
}  // namespace defender

namespace defender {
namespace {

// PemFile writes `content` to a fresh file, removed when destroyed.
class PemFile {
 public:
  explicit PemFile(const std::string& content) {
    static int counter = 0;
    path_ = ::testing::TempDir() + "config_test_pem_" + std::to_string(getpid()) + "_" +
            std::to_string(++counter);
    std::ofstream(path_) << content;
  }
  ~PemFile() { std::remove(path_.c_str()); }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

constexpr char kCert[] = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
constexpr char kKey[] = "-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n";

TEST_F(ConfigTest, ListenerTlsFilesAreReadAndChecked) {
  PemFile cert(kCert), key(kKey), ca(kCert), junk("not pem");
  auto config = Load({"--tls-cert", cert.path(), "--tls-key", key.path()});
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->tls_cert_pem, kCert);
  EXPECT_EQ(config->tls_key_pem, kKey);
  EXPECT_EQ(config->client_ca_pem, "");

  EXPECT_EQ(config->tls_cert_file, cert.path());  // watched while serving
  EXPECT_EQ(config->tls_key_file, key.path());
  EXPECT_EQ(config->tls_reload_interval, absl::Seconds(60));

  config = Load({"--tls-cert", cert.path(), "--tls-key", key.path(), "--client-ca", ca.path(),
                 "--tls-reload-seconds", "5"});
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->client_ca_pem, kCert);
  EXPECT_EQ(config->client_ca_file, ca.path());
  EXPECT_EQ(config->tls_reload_interval, absl::Seconds(5));
  EXPECT_EQ(Load({"--tls-reload-seconds", "0"}).status().code(),
            absl::StatusCode::kInvalidArgument);

  // The same from the environment.
  env_["DEFENDER_TLS_CERT"] = cert.path();
  env_["DEFENDER_TLS_KEY"] = key.path();
  env_["DEFENDER_CLIENT_CA"] = ca.path();
  config = Load({});
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->client_ca_pem, kCert);
  env_.erase("DEFENDER_TLS_CERT");
  env_.erase("DEFENDER_TLS_KEY");
  env_.erase("DEFENDER_CLIENT_CA");

  struct Case {
    std::vector<std::string> args;
    std::string message;
  };
  const std::vector<Case> refused = {
      {{"--tls-cert", cert.path()}, "go together"},
      {{"--tls-key", key.path()}, "go together"},
      {{"--client-ca", ca.path()}, "needs --tls-cert"},
      {{"--tls-cert", "/nonexistent/cert.pem", "--tls-key", key.path()}, "--tls-cert: cannot read"},
      {{"--tls-cert", junk.path(), "--tls-key", key.path()}, "holds no PEM CERTIFICATE"},
      {{"--tls-cert", cert.path(), "--tls-key", cert.path()}, "holds no PEM PRIVATE KEY"},
      {{"--tls-cert", cert.path(), "--tls-key", key.path(), "--client-ca", junk.path()},
       "--client-ca"},
  };
  for (const Case& c : refused) {
    auto result = Load(c.args);
    EXPECT_EQ(result.status().code(), absl::StatusCode::kInvalidArgument) << c.message;
    EXPECT_THAT(result.status().message(), ::testing::HasSubstr(c.message));
    EXPECT_THAT(result.status().message(), ::testing::Not(::testing::HasSubstr("MIIE")));
  }
}

TEST_F(ConfigTest, PlaintextOnAnAddressOthersCanReachNeedsInsecureListen) {
  for (const std::string listen :
       {"127.0.0.1:50051", "127.1.2.3:0", "localhost:50051", "[::1]:50051", "unix:/run/p.sock"}) {
    auto config = Load({"--listen", listen});
    EXPECT_TRUE(config.ok()) << listen << ": " << config.status();
  }
  PemFile cert(kCert), key(kKey);
  for (const std::string listen : {"0.0.0.0:50051", "[::]:50051", "10.1.2.3:443", "plugin:50051"}) {
    auto refused = Load({"--listen", listen});
    EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument) << listen;
    EXPECT_THAT(refused.status().message(), ::testing::HasSubstr("--insecure-listen")) << listen;
    auto allowed = Load({"--listen", listen, "--insecure-listen"});
    ASSERT_TRUE(allowed.ok()) << listen << ": " << allowed.status();
    EXPECT_TRUE(allowed->insecure_listen);
    auto tls = Load({"--listen", listen, "--tls-cert", cert.path(), "--tls-key", key.path()});
    EXPECT_TRUE(tls.ok()) << listen << ": " << tls.status();
  }
}

}  // namespace
}  // namespace defender
