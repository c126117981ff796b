// Many tenants and every way of getting a token, end to end: the plugin reads
// a --config file, gets tokens from the sandbox's Entra and managed identity
// emulators over real HTTP(S), and the sandbox records whose token each API
// call carried.
#include <atomic>
#include <cstdio>
#include <fstream>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "defender/v1/response_service.grpc.pb.h"
#include "gmock/gmock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "server/config.h"
#include "server/plugin_server.h"
#include "tests/integration/plugin_harness.h"
#include "openssl/evp.h"
#include "openssl/pem.h"
#include "openssl/x509.h"
#include "tools/sandbox/sandbox.h"

namespace defender {
namespace {

using ::testing::HasSubstr;

constexpr char kMachine[] = "1e5bc9d7e413ddd7902c2932e418702b84d0cc07";
constexpr char kTenantA[] = "aaaaaaaa-0000-4000-8000-00000000000a";
constexpr char kClientA[] = "aaaaaaaa-1111-4000-8000-00000000000a";
constexpr char kTenantB[] = "bbbbbbbb-0000-4000-8000-00000000000b";
constexpr char kClientB[] = "bbbbbbbb-1111-4000-8000-00000000000b";

// AppCertificate is an RSA key and a self-signed certificate for it, as an app
// registration's certificate credential would have.
struct AppCertificate {
  std::string cert_pem;
  std::string key_and_cert_pem;
};

AppCertificate MakeAppCertificate() {
  EVP_PKEY* key = EVP_RSA_gen(2048);
  X509* cert = X509_new();
  ASN1_INTEGER_set(X509_get_serialNumber(cert), 7);
  X509_gmtime_adj(X509_getm_notBefore(cert), -3600);
  X509_gmtime_adj(X509_getm_notAfter(cert), 86400);
  X509_set_pubkey(cert, key);
  X509_NAME* name = X509_get_subject_name(cert);
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                             reinterpret_cast<const unsigned char*>("defender-plugin test app"), -1,
                             -1, 0);
  X509_set_issuer_name(cert, name);
  X509_sign(cert, key, EVP_sha256());
  auto to_string = [](BIO* bio) {
    char* data = nullptr;
    long size = BIO_get_mem_data(bio, &data);
    std::string text(data, static_cast<size_t>(size));
    BIO_free(bio);
    return text;
  };
  BIO* cert_bio = BIO_new(BIO_s_mem());
  PEM_write_bio_X509(cert_bio, cert);
  BIO* key_bio = BIO_new(BIO_s_mem());
  PEM_write_bio_PrivateKey(key_bio, key, nullptr, nullptr, 0, nullptr, nullptr);
  AppCertificate result;
  result.cert_pem = to_string(cert_bio);
  result.key_and_cert_pem = to_string(key_bio) + result.cert_pem;
  X509_free(cert);
  EVP_PKEY_free(key);
  return result;
}

class TenantsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    sandbox::SandboxOptions options;
    options.tenant_id = kTenantA;
    options.client_id = kClientA;
    options.client_secret = "secret-of-a";
    options.rate_per_minute = 0;
    options.rate_per_hour = 0;
    sandbox::SandboxApp b;
    b.tenant_id = kTenantB;
    b.client_id = kClientB;
    b.client_secret = "secret-of-b";
    options.extra_apps.push_back(b);
    options.managed_identity = true;
    auto started = sandbox::Sandbox::Start(options);
    ASSERT_TRUE(started.ok()) << started.status();
    sandbox_ = *std::move(started);
    dir_ = absl::StrCat(::testing::TempDir(), "/tenants-", getpid(), "-",
                        absl::ToUnixNanos(absl::Now()));
    ASSERT_EQ(system(absl::StrCat("mkdir -p ", dir_).c_str()), 0);
    ca_file_ = dir_ + "/ca.pem";
    ASSERT_TRUE(sandbox_->WriteCaFile(ca_file_).ok());
    std::ofstream(dir_ + "/secret-a") << "secret-of-a\n";
    env_ = {{"DEFENDER_CA_FILE", ca_file_},
            {"SECRET_OF_B", "secret-of-b"},
            {"AZURE_POD_IDENTITY_AUTHORITY_HOST", sandbox_->imds_base_url()},
            {"DEFENDER_RATE_PER_MINUTE", "0"},
            {"DEFENDER_RATE_PER_HOUR", "0"}};
  }

  void TearDown() override {
    stub_.reset();
    if (server_) server_->Shutdown(absl::Seconds(5));
    server_.reset();
    sandbox_.reset();
    (void)system(absl::StrCat("rm -rf ", dir_).c_str());
  }

  // TenantJson is one tenant entry pointing at the sandbox.
  nlohmann::json TenantJson(const std::string& name, const std::string& tenant_id,
                            nlohmann::json credential) const {
    nlohmann::json tenant = {{"name", name},
                             {"apiUrl", sandbox_->base_url()},
                             {"authorityHost", sandbox_->base_url()},
                             {"credential", credential}};
    if (!tenant_id.empty()) tenant["tenantId"] = tenant_id;
    return tenant;
  }

  nlohmann::json SecretA() const {
    return TenantJson("a", kTenantA,
                      {{"clientSecret", {{"clientId", kClientA}, {"secretFile", dir_ + "/secret-a"}}}});
  }
  nlohmann::json SecretB() const {
    return TenantJson("b", kTenantB,
                      {{"clientSecret", {{"clientId", kClientB}, {"secretEnv", "SECRET_OF_B"}}}});
  }

  std::string WriteConfig(const nlohmann::json& tenants, const std::string& file = "plugin.json") {
    const std::string path = dir_ + "/" + file;
    std::ofstream(path) << nlohmann::json{{"tenants", tenants}}.dump(2);
    return path;
  }

  // Config loads the configuration from `path`, or from the environment
  // alone when `path` is "".
  absl::StatusOr<PluginConfig> Config(const std::string& path) const {
    std::vector<std::string> flags = {"--listen", "127.0.0.1:0"};
    if (!path.empty()) flags.insert(flags.end(), {"--config", path});
    return testing::LoadTestConfig(flags, env_);
  }

  void StartPlugin(const std::string& path) {
    absl::StatusOr<PluginConfig> config = Config(path);
    ASSERT_TRUE(config.ok()) << config.status();
    auto server = PluginServer::Start(*config);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    stub_ = v1::ResponseService::NewStub(grpc::CreateChannel(
        absl::StrCat("127.0.0.1:", server_->port()), grpc::InsecureChannelCredentials()));
  }

  grpc::Status Quarantine(const std::string& tenant, int file,
                          v1::QuarantineFileResponse* response = nullptr) {
    v1::QuarantineFileRequest request;
    request.set_machine_id(kMachine);
    request.set_sha1(absl::StrCat(std::string(32, 'c'), absl::Hex(file, absl::kZeroPad8)));
    request.set_comment(absl::StrCat("for tenant ", tenant.empty() ? "default" : tenant));
    request.set_tenant(tenant);
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(20)));
    v1::QuarantineFileResponse ignored;
    return stub_->QuarantineFile(&context, request, response ? response : &ignored);
  }

  std::vector<sandbox::RecordedRequest> Posts() const {
    std::vector<sandbox::RecordedRequest> posts;
    for (const auto& request : sandbox_->Requests()) {
      if (request.method == "POST" && absl::EndsWith(request.path, "StopAndQuarantineFile")) {
        posts.push_back(request);
      }
    }
    return posts;
  }

  std::unique_ptr<sandbox::Sandbox> sandbox_;
  std::string dir_, ca_file_;
  std::map<std::string, std::string> env_;
  std::unique_ptr<PluginServer> server_;
  std::unique_ptr<v1::ResponseService::Stub> stub_;
};

TEST_F(TenantsTest, TwoTenantsInOneProcessNeverMixTokens) {
  StartPlugin(WriteConfig({SecretA(), SecretB()}));
  for (int i = 0; i < 6; ++i) {
    const std::string tenant = i % 2 == 0 ? "a" : "b";
    grpc::Status status = Quarantine(tenant, i);
    ASSERT_TRUE(status.ok()) << tenant << ": " << status.error_message();
  }
  ASSERT_TRUE(Quarantine("", 100).ok());  // the first tenant is the default
  std::vector<sandbox::RecordedRequest> posts = Posts();
  ASSERT_EQ(posts.size(), 7u);
  for (const auto& post : posts) {
    const std::string comment = nlohmann::json::parse(post.body).at("Comment");
    const bool for_b = comment == "for tenant b";
    EXPECT_EQ(post.token_tenant, for_b ? kTenantB : kTenantA) << comment;
    EXPECT_EQ(post.token_client_id, for_b ? kClientB : kClientA) << comment;
  }
  EXPECT_EQ(sandbox_->TokenRequests(), 2);  // one token per tenant, each reused
}

TEST_F(TenantsTest, UnknownTenantIsInvalidArgument) {
  StartPlugin(WriteConfig({SecretA()}));
  EXPECT_EQ(Quarantine("b", 1).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_TRUE(Posts().empty());
}

TEST_F(TenantsTest, ManagedIdentityFromImds) {
  StartPlugin(WriteConfig({TenantJson("vm", "", {{"managedIdentity", nlohmann::json::object()}})}));
  v1::QuarantineFileResponse response;
  grpc::Status status = Quarantine("vm", 1, &response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(sandbox_->ManagedIdentityRequests(), 1);
  ASSERT_EQ(Posts().size(), 1u);
  EXPECT_EQ(Posts()[0].token_client_id, sandbox::kSystemAssignedClientId);
  EXPECT_EQ(sandbox_->TokenRequests(), 0);  // Entra's endpoint was not used
}

TEST_F(TenantsTest, ManagedIdentityFromTheAppServiceEndpoint) {
  env_["IDENTITY_ENDPOINT"] = sandbox_->identity_endpoint();
  env_["IDENTITY_HEADER"] = sandbox_->identity_header();
  StartPlugin(WriteConfig({TenantJson("app", "", {{"managedIdentity", nlohmann::json::object()}})}));
  grpc::Status status = Quarantine("app", 1);
  ASSERT_TRUE(status.ok()) << status.error_message();
  bool used_app_service = false;
  for (const auto& request : sandbox_->Requests()) {
    used_app_service |= request.path == "/msi/token";
  }
  EXPECT_TRUE(used_app_service);
}

TEST_F(TenantsTest, CertificateAssertionIsVerifiedByTheSandbox) {
  const AppCertificate certificate = MakeAppCertificate();
  sandbox::SandboxApp app;
  app.tenant_id = kTenantB;
  app.client_id = "cccccccc-1111-4000-8000-00000000000c";
  app.certificate_pem = certificate.cert_pem;
  sandbox_->AddApp(app);
  std::ofstream(dir_ + "/app.pem") << certificate.key_and_cert_pem;
  StartPlugin(WriteConfig(
      {TenantJson("ps", kTenantB,
                  {{"clientCertificate",
                    {{"clientId", app.client_id}, {"certificatePath", dir_ + "/app.pem"}}}}),
       TenantJson("rs", kTenantB,
                  {{"clientCertificate",
                    {{"clientId", app.client_id},
                     {"certificatePath", dir_ + "/app.pem"},
                     {"signingAlgorithm", "RS256"}}}})}));
  ASSERT_TRUE(Quarantine("ps", 1).ok());
  ASSERT_TRUE(Quarantine("rs", 2).ok());
  std::vector<sandbox::AssertionCheck> checks = sandbox_->AssertionChecks();
  ASSERT_EQ(checks.size(), 2u);
  EXPECT_EQ(checks[0].alg, "PS256");
  EXPECT_EQ(checks[0].x5t_kind, "x5t#S256");
  EXPECT_EQ(checks[1].alg, "RS256");
  EXPECT_EQ(checks[1].x5t_kind, "x5t");
  for (const auto& check : checks) {
    EXPECT_TRUE(check.signature_ok);
    EXPECT_EQ(check.aud, absl::StrCat(sandbox_->base_url(), "/", kTenantB, "/oauth2/v2.0/token"));
    EXPECT_EQ(check.iss, app.client_id);
    EXPECT_EQ(check.sub, app.client_id);
  }
  EXPECT_NE(checks[0].jti, checks[1].jti);
  for (const auto& post : Posts()) EXPECT_EQ(post.token_client_id, app.client_id);
}

TEST_F(TenantsTest, WorkloadIdentityRereadsTheRotatedTokenFile) {
  sandbox::SandboxApp app;
  app.tenant_id = kTenantB;
  app.client_id = "dddddddd-1111-4000-8000-00000000000d";
  app.federated_tokens = {"federated-token-1"};
  sandbox_->AddApp(app);
  const std::string token_file = dir_ + "/federated-token";
  std::ofstream(token_file) << "federated-token-1";
  StartPlugin(WriteConfig({TenantJson(
      "k8s", kTenantB,
      {{"workloadIdentity", {{"clientId", app.client_id}, {"tokenFile", token_file}}}})}));
  ASSERT_TRUE(Quarantine("k8s", 1).ok());
  // The cluster rotates the projected token; the old one stops working.
  sandbox_->SetFederatedTokens(app.client_id, {"federated-token-2"});
  std::ofstream(token_file, std::ios::trunc) << "federated-token-2";
  sandbox_->ExpireAllTokens();  // the next call needs a new access token
  grpc::Status status = Quarantine("k8s", 2);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(sandbox_->TokenRequests(), 2);
}

TEST_F(TenantsTest, TheEnvironmentsChainFallsThroughToTheCredentialThatWorks) {
  // A certificate Entra does not know, then a federated token it accepts.
  const AppCertificate unregistered = MakeAppCertificate();
  sandbox::SandboxApp app;
  app.tenant_id = kTenantB;
  app.client_id = "eeeeeeee-1111-4000-8000-00000000000e";
  app.federated_tokens = {"federated-token"};
  sandbox_->AddApp(app);
  std::ofstream(dir_ + "/unregistered.pem") << unregistered.key_and_cert_pem;
  std::ofstream(dir_ + "/federated") << "federated-token";
  env_["AZURE_TENANT_ID"] = kTenantB;
  env_["AZURE_CLIENT_ID"] = app.client_id;
  env_["AZURE_CLIENT_CERTIFICATE_PATH"] = dir_ + "/unregistered.pem";
  env_["AZURE_FEDERATED_TOKEN_FILE"] = dir_ + "/federated";
  env_["AZURE_AUTHORITY_HOST"] = sandbox_->base_url();
  env_["DEFENDER_API_URL"] = sandbox_->base_url();
  StartPlugin("");
  grpc::Status status = Quarantine("", 1);
  ASSERT_TRUE(status.ok()) << status.error_message();
  ASSERT_TRUE(Quarantine("", 2).ok());
  // The certificate was tried (and refused) once; the federated token is kept.
  std::vector<sandbox::AssertionCheck> checks = sandbox_->AssertionChecks();
  ASSERT_EQ(checks.size(), 1u);
  EXPECT_FALSE(checks[0].accepted);
  EXPECT_EQ(sandbox_->TokenRequests(), 2);
}

TEST_F(TenantsTest, ReloadUnderLoadDropsNoCallAndAddsTheNewTenant) {
  StartPlugin(WriteConfig({SecretA()}));
  std::atomic<bool> stop{false};
  std::atomic<int> ok{0}, failed{0};
  std::vector<std::thread> callers;
  for (int t = 0; t < 4; ++t) {
    callers.emplace_back([&, t] {
      for (int i = 0; !stop.load(); ++i) {
        if (Quarantine("a", t * 10000 + i).ok()) {
          ++ok;
        } else {
          ++failed;
        }
      }
    });
  }
  absl::SleepFor(absl::Milliseconds(300));
  // A bad file: refused, and the running tenants stay.
  auto bad = Config(WriteConfig({SecretA(), SecretA()}, "bad.json"));
  EXPECT_FALSE(bad.ok());
  // A good file with a second tenant, swapped in under load.
  auto good = Config(WriteConfig({SecretA(), SecretB()}, "good.json"));
  ASSERT_TRUE(good.ok()) << good.status();
  ASSERT_TRUE(server_->Reload(*good).ok());
  absl::SleepFor(absl::Milliseconds(300));
  stop = true;
  for (auto& caller : callers) caller.join();
  EXPECT_GT(ok.load(), 0);
  EXPECT_EQ(failed.load(), 0);
  EXPECT_TRUE(Quarantine("b", 999999).ok());  // a file no caller above used
}

TEST_F(TenantsTest, ReloadWithATenantTheAdaptersRefuseKeepsTheRunningOnes) {
  StartPlugin(WriteConfig({SecretA()}));
  nlohmann::json broken = SecretB();
  broken["tenantId"] = "not a tenant/..";
  auto config = Config(WriteConfig({SecretA(), broken}, "broken.json"));
  ASSERT_TRUE(config.ok()) << config.status();  // the file itself is well-formed
  absl::Status reloaded = server_->Reload(*config);
  EXPECT_FALSE(reloaded.ok());
  EXPECT_THAT(std::string(reloaded.message()), HasSubstr("AZURE_TENANT_ID"));
  EXPECT_TRUE(Quarantine("a", 1).ok());
  EXPECT_EQ(Quarantine("b", 2).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
}

}  // namespace
}  // namespace defender
