#include "server/config.h"

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
  auto config = Load({"--region", "uk", "--listen=0.0.0.0:7000", "--client-id", "other"});
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

}  // namespace
}  // namespace defender
