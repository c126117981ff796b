#include "server/config_file.h"

#include <cstdio>
#include <fstream>
#include <map>

#include "absl/strings/str_cat.h"
#include "adapters/common/error.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace defender {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

class ConfigFileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = ::testing::TempDir();
    secret_file_ = absl::StrCat(dir_, "/secret-", getpid());
    std::ofstream(secret_file_) << "file-secret-value\n";
    cert_file_ = absl::StrCat(dir_, "/cert-", getpid(), ".pem");
    std::ofstream(cert_file_) << "-----BEGIN CERTIFICATE-----\n";
  }
  void TearDown() override {
    std::remove(secret_file_.c_str());
    std::remove(cert_file_.c_str());
  }

  absl::StatusOr<ConfigFileContents> Parse(const std::string& json) {
    std::map<std::string, std::string> env = env_;
    return ParseConfigJson(json, "plugin.json",
                           [env](const std::string& name) -> absl::optional<std::string> {
                             auto it = env.find(name);
                             if (it == env.end()) return absl::nullopt;
                             return it->second;
                           });
  }

  std::string dir_, secret_file_, cert_file_;
  std::map<std::string, std::string> env_ = {{"FABRIKAM_SECRET", "env-secret-value"}};
};

TEST_F(ConfigFileTest, ReadsEveryCredentialKindAndPutsTheDefaultFirst) {
  auto contents = Parse(absl::StrCat(R"({
    "defaultTenant": "fabrikam",
    "tenants": [
      {"name": "contoso", "tenantId": "11111111-1111-1111-1111-111111111111", "region": "eu",
       "credential": {"clientSecret": {"clientId": "app-1", "secretFile": ")", secret_file_, R"("}},
       "ratePerMinute": 10, "ratePerHour": -1},
      {"name": "fabrikam", "tenant_id": "fabrikam.onmicrosoft.com",
       "credential": {"clientSecret": {"clientId": "app-2", "secretEnv": "FABRIKAM_SECRET"}}},
      {"name": "northwind", "tenantId": "northwind.example", "apiUrl": "https://proxy.example/x",
       "credential": {"clientCertificate": {"clientId": "app-3", "certificatePath": ")",
                                            cert_file_, R"(", "signingAlgorithm": "rs256"}}},
      {"name": "k8s", "tenantId": "t4",
       "credential": {"workloadIdentity": {"clientId": "app-4", "tokenFile": "/var/run/token"}}},
      {"name": "azure-vm", "credential": {"managedIdentity": {}}}
    ]})"));
  ASSERT_TRUE(contents.ok()) << contents.status();
  ASSERT_EQ(contents->tenants.size(), 5u);
  const auto& fabrikam = contents->tenants[0];
  EXPECT_EQ(fabrikam.name, "fabrikam");
  EXPECT_EQ(fabrikam.credentials[0].client_secret, "env-secret-value");
  EXPECT_EQ(fabrikam.endpoints.api_base_url, "https://api.security.microsoft.com");
  const auto& contoso = contents->tenants[1];
  EXPECT_EQ(contoso.credentials[0].client_secret, "file-secret-value");
  EXPECT_EQ(contoso.endpoints.api_base_url, "https://eu.api.security.microsoft.com");
  EXPECT_EQ(contoso.rate_per_minute, 10);
  EXPECT_EQ(contoso.rate_per_hour, 0);   // -1 in the file: off
  EXPECT_EQ(fabrikam.rate_per_minute, -2);  // the plugin's
  const auto& northwind = contents->tenants[2];
  EXPECT_EQ(northwind.credentials[0].kind, CredentialConfig::Kind::kClientCertificate);
  EXPECT_EQ(northwind.credentials[0].signing_algorithm, "RS256");
  EXPECT_EQ(northwind.endpoints.api_base_url, "https://proxy.example/x");
  EXPECT_EQ(contents->tenants[3].credentials[0].kind, CredentialConfig::Kind::kWorkloadIdentity);
  EXPECT_EQ(contents->tenants[4].credentials[0].kind, CredentialConfig::Kind::kManagedIdentity);
  EXPECT_EQ(contents->tenants[4].tenant_id, "");
}

TEST_F(ConfigFileTest, ProblemsNameTheKey) {
  struct Case {
    std::string json;
    std::string says;
  };
  const std::string ok_credential =
      absl::StrCat(R"({"clientSecret": {"clientId": "a", "secretFile": ")", secret_file_, R"("}})");
  const std::vector<Case> cases = {
      {"{", "not a valid config file"},
      {R"({"tenants": []})", "tenants"},
      {R"({"tenantz": []})", "tenantz"},
      {absl::StrCat(R"({"tenants": [{"name": "a", "tenantId": "t", "credential": )", ok_credential,
                    R"(, "colour": "blue"}]})"),
       "colour"},
      {R"({"tenants": [{"name": "a", "tenantId": "t", "credential": {"clientSecret":
          {"clientId": "a", "secret": "inline"}}}]})",
       "secret"},
      {absl::StrCat(R"({"tenants": [{"tenantId": "t", "credential": )", ok_credential, "}]}"),
       "tenants[0].name"},
      {absl::StrCat(R"({"tenants": [{"name": "a b", "tenantId": "t", "credential": )",
                    ok_credential, "}]}"),
       "tenants[0].name"},
      {absl::StrCat(R"({"tenants": [{"name": "a", "tenantId": "t", "credential": )", ok_credential,
                    R"(}, {"name": "a", "tenantId": "t", "credential": )", ok_credential, "}]}"),
       "tenants[1].name"},
      {absl::StrCat(R"({"tenants": [{"name": "a", "credential": )", ok_credential, "}]}"),
       "tenants[0].tenantId"},
      {R"({"tenants": [{"name": "a", "tenantId": "t"}]})", "tenants[0].credential"},
      {R"({"tenants": [{"name": "a", "tenantId": "t", "credential": {}}]})",
       "tenants[0].credential"},
      {R"({"tenants": [{"name": "a", "tenantId": "t", "credential": {"clientSecret":
          {"clientId": "a", "secretEnv": "NOT_SET_ANYWHERE"}}}]})",
       "NOT_SET_ANYWHERE"},
      {R"({"tenants": [{"name": "a", "tenantId": "t", "credential": {"clientSecret":
          {"clientId": "a", "secretFile": "/nonexistent/secret"}}}]})",
       "tenants[0].credential.clientSecret.secretFile"},
      {R"({"tenants": [{"name": "a", "tenantId": "t", "credential": {"clientSecret":
          {"clientId": "a"}}}]})",
       "never written in the file"},
      {absl::StrCat(R"({"tenants": [{"name": "a", "tenantId": "t", "region": "mars",
          "credential": )", ok_credential, "}]}"),
       "DEFENDER_REGION"},
      {absl::StrCat(R"({"defaultTenant": "b", "tenants": [{"name": "a", "tenantId": "t",
          "credential": )", ok_credential, "}]}"),
       "defaultTenant"},
      {absl::StrCat(R"({"tenants": [{"name": "a", "tenantId": "t", "ratePerMinute": -5,
          "credential": )", ok_credential, "}]}"),
       "ratePerMinute"},
  };
  for (const Case& c : cases) {
    auto contents = Parse(c.json);
    ASSERT_FALSE(contents.ok()) << c.json;
    EXPECT_EQ(contents.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(contents.status().message()), HasSubstr(c.says)) << c.json;
    EXPECT_THAT(contents.status().message(), HasSubstr("plugin.json"));
    EXPECT_THAT(contents.status().message(), Not(HasSubstr("file-secret-value")));
  }
}

TEST_F(ConfigFileTest, ReadConfigFileNamesAMissingFile) {
  auto contents = ReadConfigFile("/nonexistent/plugin.json", [](const std::string&) {
    return absl::optional<std::string>();
  });
  EXPECT_THAT(contents.status().message(), HasSubstr("/nonexistent/plugin.json"));
}

}  // namespace
}  // namespace defender
