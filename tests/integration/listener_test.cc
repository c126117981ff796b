// The plugin's own door: its listener over TLS and mutual TLS, end to end
// with real gRPC clients, against the sandbox.
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "adapters/journal/sqlite_journal.h"
#include "defender/v1/response_service.grpc.pb.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "server/config.h"
#include "server/plugin_server.h"
#include "tests/integration/plugin_harness.h"
#include "tools/sandbox/certs.h"
#include "tools/sandbox/sandbox.h"

namespace defender {
namespace {

constexpr char kMachine[] = "1e5bc9d7e413ddd7902c2932e418702b84d0cc07";
constexpr char kPost[] = "StopAndQuarantineFile$";

// File writes `content` to a fresh file, removed when destroyed.
class File {
 public:
  explicit File(const std::string& content) {
    static int counter = 0;
    path_ = absl::StrCat(::testing::TempDir(), "listener_test_", getpid(), "_", ++counter);
    std::ofstream(path_) << content;
  }
  ~File() { std::remove(path_.c_str()); }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

sandbox::CertBundle MustGenerate(const std::vector<std::string>& names, const std::string& eku) {
  auto generated = sandbox::GenerateCertificates(names, eku);
  if (!generated.ok()) {
    ADD_FAILURE() << generated.status();
    return {};
  }
  return *std::move(generated);
}

class ListenerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    sandbox::SandboxOptions options;
    options.rate_per_minute = 0;
    options.rate_per_hour = 0;
    auto started = sandbox::Sandbox::Start(options);
    ASSERT_TRUE(started.ok()) << started.status();
    sandbox_ = *std::move(started);
    sandbox_ca_ = std::make_unique<File>("");
    ASSERT_TRUE(sandbox_->WriteCaFile(sandbox_ca_->path()).ok());
    env_ = {{"AZURE_TENANT_ID", options.tenant_id},
            {"AZURE_CLIENT_ID", options.client_id},
            {"AZURE_CLIENT_SECRET", options.client_secret},
            {"AZURE_AUTHORITY_HOST", sandbox_->base_url()},
            {"DEFENDER_API_URL", sandbox_->base_url()},
            {"DEFENDER_CA_FILE", sandbox_ca_->path()}};
  }

  void StartPlugin(bool mutual, const std::string& authz_file = "",
                   std::vector<std::string> flags = {}) {
    for (const std::string& flag : {std::string("--listen"), std::string("127.0.0.1:0"),
                                    std::string("--tls-cert"), server_cert_.path(),
                                    std::string("--tls-key"), server_key_.path()}) {
      flags.push_back(flag);
    }
    if (mutual) {
      flags.push_back("--client-ca");
      flags.push_back(client_ca_.path());
    }
    if (!authz_file.empty()) {
      flags.push_back("--authz");
      flags.push_back(authz_file);
    }
    auto config = testing::LoadTestConfig(flags, env_);
    ASSERT_TRUE(config.ok()) << config.status();
    state_dir_ = config->state_dir;
    auto server = PluginServer::Start(*config);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
  }

  // Quarantine calls the plugin over `credentials`, checking the server's
  // certificate for 127.0.0.1.
  grpc::Status Quarantine(std::shared_ptr<grpc::ChannelCredentials> credentials, int file,
                          const std::string& bearer = "") {
    auto channel = grpc::CreateChannel(absl::StrCat("127.0.0.1:", server_->port()), credentials);
    auto stub = v1::ResponseService::NewStub(channel);
    v1::QuarantineFileRequest request;
    request.set_machine_id(kMachine);
    request.set_sha1(absl::StrCat(std::string(32, 'c'), absl::Hex(file, absl::kZeroPad8)));
    request.set_comment("listener test");
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
    if (!bearer.empty()) context.AddMetadata("authorization", "Bearer " + bearer);
    v1::QuarantineFileResponse response;
    return stub->QuarantineFile(&context, request, &response);
  }

  std::shared_ptr<grpc::ChannelCredentials> Tls(const std::string& ca,
                                                const sandbox::CertBundle* client = nullptr) {
    grpc::SslCredentialsOptions options;
    options.pem_root_certs = ca;
    if (client != nullptr) {
      options.pem_cert_chain = client->cert_pem;
      options.pem_private_key = client->key_pem;
    }
    return grpc::SslCredentials(options);
  }

  int Posts() const { return sandbox_->CountRequests("POST", kPost); }

  const sandbox::CertBundle server_certs_ = MustGenerate({"127.0.0.1"}, "serverAuth");
  const sandbox::CertBundle client_certs_ =
      MustGenerate({"playbook-runner.contoso.com"}, "clientAuth");
  const sandbox::CertBundle stranger_certs_ =
      MustGenerate({"stranger.example.com"}, "clientAuth");
  File server_cert_{server_certs_.cert_pem}, server_key_{server_certs_.key_pem},
      client_ca_{client_certs_.ca_pem};
  std::unique_ptr<sandbox::Sandbox> sandbox_;
  std::unique_ptr<File> sandbox_ca_;
  std::map<std::string, std::string> env_;
  std::string state_dir_;
  std::unique_ptr<PluginServer> server_;
};

TEST_F(ListenerTest, TlsListenerServesTlsClientsOnly) {
  StartPlugin(/*mutual=*/false);
  grpc::Status status = Quarantine(Tls(server_certs_.ca_pem), 1);
  EXPECT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(Posts(), 1);

  // Plaintext, or a client that does not trust the plugin's CA: no call.
  status = Quarantine(grpc::InsecureChannelCredentials(), 2);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE) << status.error_message();
  status = Quarantine(Tls(client_certs_.ca_pem), 3);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE) << status.error_message();
  EXPECT_EQ(Posts(), 1);
}

TEST_F(ListenerTest, MutualTlsAdmitsOnlyClientsWithACertificateOfTheClientCa) {
  StartPlugin(/*mutual=*/true);
  grpc::Status status = Quarantine(Tls(server_certs_.ca_pem, &client_certs_), 1);
  EXPECT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(Posts(), 1);

  // No client certificate, or one from another CA: the handshake fails.
  status = Quarantine(Tls(server_certs_.ca_pem), 2);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE) << status.error_message();
  status = Quarantine(Tls(server_certs_.ca_pem, &stranger_certs_), 3);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE) << status.error_message();
  EXPECT_EQ(Posts(), 1);

  // The audit trail names the caller by its certificate.
  auto journal = journal::SqliteJournal::OpenReadOnly(state_dir_);
  ASSERT_TRUE(journal.ok()) << journal.status();
  auto entries = (*journal)->List(journal::ListOptions());
  ASSERT_TRUE(entries.ok()) << entries.status();
  ASSERT_EQ(entries->size(), 1u);
  EXPECT_EQ(entries->front().caller, "playbook-runner.contoso.com");
}

TEST_F(ListenerTest, AuthorizationMapLetsEachCallerActOnlyOnItsTenants) {
  File token("soar-token-8d2f61\n");
  File authz(absl::StrCat(R"({"callers": [
      {"name": "runner", "certificateNames": ["playbook-runner.contoso.com"], "tenants": ["default"]},
      {"name": "auditor", "certificateNames": ["stranger.example.com"], "tenants": ["fabrikam"]},
      {"name": "soar", "tokenFile": ")", token.path(), R"(", "tenants": ["*"]}]})"));
  StartPlugin(/*mutual=*/false, authz.path());

  // No client certificate asked for: only the bearer token identifies.
  grpc::Status status = Quarantine(Tls(server_certs_.ca_pem), 1, "soar-token-8d2f61");
  EXPECT_TRUE(status.ok()) << status.error_message();
  status = Quarantine(Tls(server_certs_.ca_pem), 2, "soar-token-8d2f62");
  EXPECT_EQ(status.error_code(), grpc::StatusCode::PERMISSION_DENIED) << status.error_message();
  EXPECT_EQ(status.error_message().find("soar-token"), std::string::npos);
  status = Quarantine(Tls(server_certs_.ca_pem), 3);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::PERMISSION_DENIED) << status.error_message();
  EXPECT_EQ(Posts(), 1);
}

TEST_F(ListenerTest, AuthorizationMapWithMutualTlsChecksTheCertificatesTenants) {
  File authz(R"({"callers": [
      {"name": "runner", "certificateNames": ["playbook-runner.contoso.com"], "tenants": ["other"]}]})");
  StartPlugin(/*mutual=*/true, authz.path());
  // The runner's certificate is known, but not for the default tenant.
  grpc::Status status = Quarantine(Tls(server_certs_.ca_pem, &client_certs_), 1);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::PERMISSION_DENIED) << status.error_message();
  EXPECT_NE(status.error_message().find("'runner' may not act on tenant 'default'"),
            std::string::npos)
      << status.error_message();
  EXPECT_EQ(Posts(), 0);
  server_.reset();

  File allowed(R"({"callers": [
      {"name": "runner", "certificateNames": ["playbook-runner.contoso.com"], "tenants": ["default"]}]})");
  StartPlugin(/*mutual=*/true, allowed.path());
  status = Quarantine(Tls(server_certs_.ca_pem, &client_certs_), 2);
  EXPECT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(Posts(), 1);
}

TEST_F(ListenerTest, ReloadReadsTheAuthorizationFileAgainAndKeepsItWhenTheNewOneIsBad) {
  File token("soar-token-old\n");
  File authz(absl::StrCat(R"({"callers": [{"name": "soar", "tokenFile": ")", token.path(),
                          R"(", "tenants": ["*"]}]})"));
  StartPlugin(/*mutual=*/false, authz.path());
  std::vector<std::string> flags = {"--listen", "127.0.0.1:0", "--tls-cert", server_cert_.path(),
                                    "--tls-key", server_key_.path(), "--authz", authz.path()};
  auto config = testing::LoadTestConfig(flags, env_);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_TRUE(Quarantine(Tls(server_certs_.ca_pem), 1, "soar-token-old").ok());

  // The operator rotates the token, then sends SIGHUP (Reload): the new
  // token works at once and the old one no longer does.
  std::ofstream(token.path(), std::ios::trunc) << "soar-token-new\n";
  ASSERT_TRUE(server_->Reload(*config).ok());
  EXPECT_TRUE(Quarantine(Tls(server_certs_.ca_pem), 2, "soar-token-new").ok());
  EXPECT_EQ(Quarantine(Tls(server_certs_.ca_pem), 3, "soar-token-old").error_code(),
            grpc::StatusCode::PERMISSION_DENIED);

  // A broken file is refused with its key named; the running map stays.
  std::ofstream(authz.path(), std::ios::trunc) << R"({"callers": [{"name": "soar"}]})";
  absl::Status refused = server_->Reload(*config);
  EXPECT_EQ(refused.code(), absl::StatusCode::kInvalidArgument) << refused;
  EXPECT_NE(refused.message().find("callers[0]"), std::string::npos) << refused;
  EXPECT_TRUE(Quarantine(Tls(server_certs_.ca_pem), 4, "soar-token-new").ok());
  EXPECT_EQ(Posts(), 3);
}

// SecretVolume lays out TLS files as a Kubernetes Secret volume does: each
// file a symlink through "..data", a symlink to the current version's
// directory, which a renewal swaps in one rename.
class SecretVolume {
 public:
  SecretVolume() {
    dir_ = absl::StrCat(::testing::TempDir(), "listener_secret_", getpid(), "_",
                        absl::ToUnixNanos(absl::Now()));
    ::mkdir(dir_.c_str(), 0700);
    for (const char* name : {"tls.crt", "tls.key", "ca.crt"}) {
      ::symlink(absl::StrCat("..data/", name).c_str(), Path(name).c_str());
    }
  }
  ~SecretVolume() { std::system(absl::StrCat("rm -rf '", dir_, "'").c_str()); }
  std::string Path(const std::string& name) const { return absl::StrCat(dir_, "/", name); }

  // Publish writes a new version and swaps it in atomically.
  void Publish(const std::string& cert, const std::string& key, const std::string& ca) {
    const std::string version = absl::StrCat("..v", ++versions_);
    ::mkdir(Path(version).c_str(), 0700);
    std::ofstream(Path(version + "/tls.crt")) << cert;
    std::ofstream(Path(version + "/tls.key")) << key;
    std::ofstream(Path(version + "/ca.crt")) << ca;
    ::symlink(version.c_str(), Path("..data_tmp").c_str());
    ::rename(Path("..data_tmp").c_str(), Path("..data").c_str());
  }

 private:
  std::string dir_;
  int versions_ = 0;
};

TEST_F(ListenerTest, RenewedCertificateAndClientCaAreServedWithoutARestart) {
  SecretVolume volume;
  volume.Publish(server_certs_.cert_pem, server_certs_.key_pem, client_certs_.ca_pem);
  auto config = testing::LoadTestConfig(
      {"--listen", "127.0.0.1:0", "--tls-cert", volume.Path("tls.crt"), "--tls-key",
       volume.Path("tls.key"), "--client-ca", volume.Path("ca.crt"), "--tls-reload-seconds", "1"},
      env_);
  ASSERT_TRUE(config.ok()) << config.status();
  auto server = PluginServer::Start(*config);
  ASSERT_TRUE(server.ok()) << server.status();
  server_ = *std::move(server);
  ASSERT_TRUE(Quarantine(Tls(server_certs_.ca_pem, &client_certs_), 1).ok());

  // The certificate is renewed under a new CA and the client CA moves to a
  // new one: within a few refreshes the plugin serves the new certificate
  // and takes only clients of the new CA.
  const sandbox::CertBundle renewed = MustGenerate({"127.0.0.1"}, "serverAuth");
  const sandbox::CertBundle new_clients = MustGenerate({"runner-2.contoso.com"}, "clientAuth");
  volume.Publish(renewed.cert_pem, renewed.key_pem, new_clients.ca_pem);
  grpc::Status renewed_status = grpc::Status::CANCELLED;
  for (int i = 0; i < 100 && !renewed_status.ok(); ++i) {
    renewed_status = Quarantine(Tls(renewed.ca_pem, &new_clients), 10 + i);
    if (!renewed_status.ok()) absl::SleepFor(absl::Milliseconds(200));
  }
  EXPECT_TRUE(renewed_status.ok()) << renewed_status.error_message();
  EXPECT_EQ(Quarantine(Tls(server_certs_.ca_pem, &client_certs_), 200).error_code(),
            grpc::StatusCode::UNAVAILABLE);  // the old certificate is no longer served
  EXPECT_EQ(Quarantine(Tls(renewed.ca_pem, &client_certs_), 201).error_code(),
            grpc::StatusCode::UNAVAILABLE);  // nor the old client CA trusted
}

TEST_F(ListenerTest, UnreadableAuthorizationFileStopsTheStart) {
  auto config = testing::LoadTestConfig(
      {"--listen", "127.0.0.1:0", "--authz", "/nonexistent/authz.json"}, env_);
  ASSERT_TRUE(config.ok()) << config.status();
  auto server = PluginServer::Start(*config);
  EXPECT_EQ(server.status().code(), absl::StatusCode::kInvalidArgument) << server.status();
}

}  // namespace
}  // namespace defender
