// End-to-end: a gRPC client -> the in-process plugin -> real libcurl and real
// TLS -> the Defender sandbox on 127.0.0.1. Asserts on what the caller got and
// on what the sandbox received.
#include <cstdio>
#include <fstream>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "defender/v1/response_service.grpc.pb.h"
#include "gmock/gmock.h"
#include "google/rpc/error_details.pb.h"
#include "google/rpc/status.pb.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "server/config.h"
#include "server/plugin_server.h"
#include "tests/integration/plugin_harness.h"
#include "tools/sandbox/certs.h"
#include "tools/sandbox/sandbox.h"

namespace defender {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

constexpr char kMachine[] = "1e5bc9d7e413ddd7902c2932e418702b84d0cc07";
constexpr char kSha1[] = "87662bc3d60e4200ceaf7aae249d1c343f4b83c9";
constexpr char kSecret[] = "sandbox-secret-Z9$&+= x";

// Details is what a caller can read from a failed call.
struct Details {
  google::rpc::ErrorInfo info;
  bool has_info = false;
  google::rpc::RetryInfo retry;
  bool has_retry = false;
};

Details ReadDetails(const grpc::Status& status) {
  Details details;
  google::rpc::Status rpc;
  EXPECT_TRUE(rpc.ParseFromString(status.error_details())) << "no google.rpc.Status details";
  EXPECT_EQ(rpc.code(), static_cast<int>(status.error_code()));
  for (const google::protobuf::Any& any : rpc.details()) {
    if (any.UnpackTo(&details.info)) details.has_info = true;
    if (any.UnpackTo(&details.retry)) details.has_retry = true;
  }
  EXPECT_TRUE(details.has_info) << "no ErrorInfo in " << status.error_message();
  if (details.has_info) EXPECT_EQ(details.info.domain(), "defender-plugin");
  return details;
}

std::string TempPath(const std::string& name) {
  return absl::StrCat(::testing::TempDir(), "/", name, "-", getpid(), "-",
                      absl::ToUnixNanos(absl::Now()));
}

class QuarantineTest : public ::testing::Test {
 protected:
  void SetUp() override {
    sandbox::SandboxOptions options;
    options.client_secret = kSecret;
    options.action_step = absl::Milliseconds(300);
    auto started = sandbox::Sandbox::Start(options);
    ASSERT_TRUE(started.ok()) << started.status();
    sandbox_ = *std::move(started);
    ca_file_ = TempPath("sandbox-ca.pem");
    ASSERT_TRUE(sandbox_->WriteCaFile(ca_file_).ok());
    env_ = {{"AZURE_TENANT_ID", "11111111-1111-1111-1111-111111111111"},
            {"AZURE_CLIENT_ID", "22222222-2222-2222-2222-222222222222"},
            {"AZURE_CLIENT_SECRET", kSecret},
            {"AZURE_AUTHORITY_HOST", sandbox_->base_url()},
            {"DEFENDER_API_URL", sandbox_->base_url()},
            {"DEFENDER_CA_FILE", ca_file_}};
  }

  void TearDown() override {
    stub_.reset();
    if (server_) server_->Shutdown(absl::Seconds(5));
    server_.reset();
    sandbox_.reset();
    std::remove(ca_file_.c_str());
  }

  // StartPlugin starts the plugin with env_ and connects stub_.
  void StartPlugin() {
    absl::StatusOr<PluginConfig> config = testing::LoadTestConfig({"--listen", "127.0.0.1:0"}, env_);
    ASSERT_TRUE(config.ok()) << config.status();
    auto server = PluginServer::Start(*config);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    channel_ = grpc::CreateChannel(absl::StrCat("127.0.0.1:", server_->port()),
                                   grpc::InsecureChannelCredentials());
    stub_ = v1::ResponseService::NewStub(channel_);
  }

  v1::QuarantineFileRequest ValidRequest() const {
    v1::QuarantineFileRequest request;
    request.set_machine_id(kMachine);
    request.set_sha1(kSha1);
    request.set_comment("Stop and quarantine file on machine due to alert 441688558380765161");
    return request;
  }

  grpc::Status Quarantine(const v1::QuarantineFileRequest& request,
                          v1::QuarantineFileResponse* response) {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
    return stub_->QuarantineFile(&context, request, response);
  }

  // ApiRequests are the requests the sandbox received outside the token endpoint.
  std::vector<sandbox::RecordedRequest> ApiRequests() const {
    std::vector<sandbox::RecordedRequest> api;
    for (const auto& request : sandbox_->Requests()) {
      if (absl::StartsWith(request.path, "/api/")) api.push_back(request);
    }
    return api;
  }

  std::unique_ptr<sandbox::Sandbox> sandbox_;
  std::string ca_file_;
  std::map<std::string, std::string> env_;
  std::unique_ptr<PluginServer> server_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::ResponseService::Stub> stub_;
};

std::string HeaderOf(const sandbox::RecordedRequest& request, const std::string& name) {
  for (const auto& [key, value] : request.headers) {
    if (absl::EqualsIgnoreCase(key, name)) return value;
  }
  return "";
}

TEST_F(QuarantineTest, HappyPathSendsTheDocumentedRequestAndReturnsTheAction) {
  StartPlugin();
  v1::QuarantineFileResponse response;
  ::testing::internal::CaptureStderr();
  grpc::Status status = Quarantine(ValidRequest(), &response);
  const std::string logs = ::testing::internal::GetCapturedStderr();
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_THAT(logs, HasSubstr(R"("rpc":"QuarantineFile")"));
  EXPECT_THAT(logs, Not(HasSubstr(kSecret)));
  EXPECT_THAT(logs, Not(HasSubstr("Bearer")));

  const v1::MachineAction& action = response.action();
  EXPECT_FALSE(action.id().empty());
  EXPECT_EQ(action.type(), v1::MACHINE_ACTION_TYPE_STOP_AND_QUARANTINE_FILE);
  EXPECT_EQ(action.status(), v1::MACHINE_ACTION_STATUS_PENDING);
  EXPECT_EQ(action.machine_id(), kMachine);
  EXPECT_EQ(action.requestor_comment(), ValidRequest().comment());
  EXPECT_EQ(action.related_file_info().file_identifier(), kSha1);
  EXPECT_EQ(action.related_file_info().file_identifier_type(), v1::FILE_IDENTIFIER_TYPE_SHA1);
  EXPECT_GT(action.creation_time().seconds(), 0);

  std::vector<sandbox::RecordedRequest> all = sandbox_->Requests();
  ASSERT_EQ(all.size(), 2u);
  // The token request: v2 client credentials for the Defender scope.
  EXPECT_EQ(all[0].method, "POST");
  EXPECT_EQ(all[0].path, "/11111111-1111-1111-1111-111111111111/oauth2/v2.0/token");
  EXPECT_THAT(all[0].body, HasSubstr("grant_type=client_credentials"));
  EXPECT_THAT(all[0].body,
              HasSubstr("scope=https%3A%2F%2Fapi.securitycenter.microsoft.com%2F.default"));
  // The API call, exactly as documented.
  const sandbox::RecordedRequest& post = all[1];
  EXPECT_EQ(post.method, "POST");
  EXPECT_EQ(post.path, absl::StrCat("/api/machines/", kMachine, "/StopAndQuarantineFile"));
  EXPECT_TRUE(absl::StartsWith(HeaderOf(post, "Authorization"), "Bearer "));
  EXPECT_THAT(HeaderOf(post, "Content-Type"), HasSubstr("application/json"));
  nlohmann::json body = nlohmann::json::parse(post.body);
  EXPECT_EQ(body, (nlohmann::json{{"Comment", ValidRequest().comment()}, {"Sha1", kSha1}}));
}

TEST_F(QuarantineTest, CommentReachesDefenderByteForByte) {
  StartPlugin();
  v1::QuarantineFileRequest request = ValidRequest();
  const std::string comment =
      "quotes \" ' backslash \\ \\\\ newline\nline two\r\ttab\t end; "
      "non-ASCII: Ünïcødé – 日本語 ✓ 🚨 </script> {\"json\": true}";
  request.set_comment(comment);
  v1::QuarantineFileResponse response;
  grpc::Status status = Quarantine(request, &response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  std::vector<sandbox::RecordedRequest> api = ApiRequests();
  ASSERT_EQ(api.size(), 1u);
  EXPECT_EQ(nlohmann::json::parse(api[0].body).at("Comment").get<std::string>(), comment);
  EXPECT_EQ(response.action().requestor_comment(), comment);
}

TEST_F(QuarantineTest, UppercaseHexIsSentInLowerCase) {
  StartPlugin();
  v1::QuarantineFileRequest request = ValidRequest();
  request.set_machine_id(absl::AsciiStrToUpper(kMachine));
  request.set_sha1(absl::AsciiStrToUpper(kSha1));
  v1::QuarantineFileResponse response;
  ASSERT_TRUE(Quarantine(request, &response).ok());
  std::vector<sandbox::RecordedRequest> api = ApiRequests();
  ASSERT_EQ(api.size(), 1u);
  EXPECT_EQ(api[0].path, absl::StrCat("/api/machines/", kMachine, "/StopAndQuarantineFile"));
  EXPECT_EQ(nlohmann::json::parse(api[0].body).at("Sha1"), kSha1);
}

TEST_F(QuarantineTest, EveryInvalidInputIsRejectedAndNothingIsSent) {
  StartPlugin();
  struct Case {
    std::string name;
    std::function<void(v1::QuarantineFileRequest&)> mutate;
    std::string reason;
  };
  const std::vector<Case> cases = {
      {"empty machine", [](auto& r) { r.set_machine_id(""); }, "INVALID_MACHINE_ID"},
      {"short machine", [](auto& r) { r.set_machine_id("1e5bc9d7"); }, "INVALID_MACHINE_ID"},
      {"non-hex machine",
       [](auto& r) { r.set_machine_id("ze5bc9d7e413ddd7902c2932e418702b84d0cc07"); },
       "INVALID_MACHINE_ID"},
      {"machine with path",
       [](auto& r) { r.set_machine_id("../../api/machineactions/x/cancel/aaaaaaaa"); },
       "INVALID_MACHINE_ID"},
      {"empty sha1", [](auto& r) { r.set_sha1(""); }, "INVALID_SHA1"},
      {"sha256 in sha1",
       [](auto& r) { r.set_sha1(std::string(64, 'a')); }, "INVALID_SHA1"},
      {"sha1 with space",
       [](auto& r) { r.set_sha1("87662bc3d60e4200ceaf7aae249d1c343f4b83c "); }, "INVALID_SHA1"},
      {"empty comment", [](auto& r) { r.set_comment(""); }, "COMMENT_REQUIRED"},
      {"long comment", [](auto& r) { r.set_comment(std::string(1001, 'x')); },
       "COMMENT_TOO_LONG"},
      {"long request id", [](auto& r) { r.set_request_id(std::string(129, 'r')); },
       "INVALID_REQUEST_ID"},
      {"unknown tenant", [](auto& r) { r.set_tenant("contoso"); }, "UNKNOWN_TENANT"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    v1::QuarantineFileRequest request = ValidRequest();
    c.mutate(request);
    v1::QuarantineFileResponse response;
    grpc::Status status = Quarantine(request, &response);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_EQ(ReadDetails(status).info.reason(), c.reason);
  }
  // A comment of exactly 1,000 characters (multi-byte ones) is accepted.
  v1::QuarantineFileRequest longest = ValidRequest();
  std::string thousand;
  for (int i = 0; i < 1000; ++i) thousand += "é";
  longest.set_comment(thousand);
  v1::QuarantineFileResponse response;
  EXPECT_TRUE(Quarantine(longest, &response).ok());
  // Only that last call reached the sandbox (one token + one POST).
  EXPECT_EQ(ApiRequests().size(), 1u);
}

TEST_F(QuarantineTest, UnknownMachineIsNotFoundWithDefenderDetails) {
  StartPlugin();
  v1::QuarantineFileRequest request = ValidRequest();
  request.set_machine_id("ffffffffffffffffffffffffffffffffffffffff");
  v1::QuarantineFileResponse response;
  grpc::Status status = Quarantine(request, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::NOT_FOUND);
  Details details = ReadDetails(status);
  EXPECT_EQ(details.info.reason(), "DEFENDER_NOT_FOUND");
  EXPECT_EQ(details.info.metadata().at("http_status"), "404");
  EXPECT_EQ(details.info.metadata().at("defender_code"), "ResourceNotFound");
  EXPECT_FALSE(details.info.metadata().at("tracking_id").empty());
}

TEST_F(QuarantineTest, WrongCaFailsClosed) {
  auto other = sandbox::GenerateCertificates();
  ASSERT_TRUE(other.ok());
  const std::string wrong_ca = TempPath("other-ca.pem");
  std::ofstream(wrong_ca) << other->ca_pem;
  env_["DEFENDER_CA_FILE"] = wrong_ca;
  StartPlugin();
  v1::QuarantineFileResponse response;
  grpc::Status status = Quarantine(ValidRequest(), &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_EQ(ReadDetails(status).info.reason(), "UPSTREAM_TLS_FAILED");
  EXPECT_TRUE(sandbox_->Requests().empty()) << "a request went out over an untrusted connection";
  std::remove(wrong_ca.c_str());
}

TEST_F(QuarantineTest, RejectedClientSecretIsUnauthenticatedWithAadstsCode) {
  env_["AZURE_CLIENT_SECRET"] = "not-the-secret-42";
  StartPlugin();
  v1::QuarantineFileResponse response;
  ::testing::internal::CaptureStderr();
  grpc::Status status = Quarantine(ValidRequest(), &response);
  const std::string logs = ::testing::internal::GetCapturedStderr();
  EXPECT_THAT(logs, HasSubstr("UNAUTHENTICATED"));  // the call was logged...
  EXPECT_THAT(logs, Not(HasSubstr("not-the-secret-42")));  // ...without the secret
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_THAT(status.error_message(), HasSubstr("AADSTS7000215"));
  Details details = ReadDetails(status);
  EXPECT_EQ(details.info.reason(), "TOKEN_REQUEST_REJECTED");
  EXPECT_EQ(details.info.metadata().at("aadsts_code"), "AADSTS7000215");
  const std::string correlation = details.info.metadata().at("correlation_id");
  EXPECT_FALSE(correlation.empty());
  EXPECT_THAT(status.error_message(), HasSubstr(correlation));
  EXPECT_THAT(status.error_message(), Not(HasSubstr("not-the-secret-42")));
  EXPECT_THAT(status.error_details(), Not(HasSubstr("not-the-secret-42")));
  EXPECT_TRUE(ApiRequests().empty());
}

TEST_F(QuarantineTest, OneTokenServesManyConcurrentCalls) {
  StartPlugin();
  constexpr int kThreads = 8;
  constexpr int kCallsPerThread = 5;
  std::atomic<int> ok{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kCallsPerThread; ++i) {
        v1::QuarantineFileRequest request = ValidRequest();
        // A different file each time, so no call meets a pending twin.
        request.set_sha1(absl::StrCat(std::string(32, 'a'), absl::Hex(t * 100 + i, absl::kZeroPad8)));
        v1::QuarantineFileResponse response;
        if (Quarantine(request, &response).ok()) ++ok;
      }
    });
  }
  for (auto& thread : threads) thread.join();
  EXPECT_EQ(ok.load(), kThreads * kCallsPerThread);
  EXPECT_EQ(sandbox_->TokenRequests(), 1);
  EXPECT_EQ(ApiRequests().size(), static_cast<size_t>(kThreads * kCallsPerThread));
}

TEST_F(QuarantineTest, ExpiredTokenIsRenewedOnceAndTheCallSucceeds) {
  StartPlugin();
  v1::QuarantineFileResponse response;
  ASSERT_TRUE(Quarantine(ValidRequest(), &response).ok());
  sandbox_->ExpireAllTokens();
  v1::QuarantineFileRequest request = ValidRequest();
  request.set_sha1("0123456789abcdef0123456789abcdef01234567");
  grpc::Status status = Quarantine(request, &response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(sandbox_->TokenRequests(), 2);
  EXPECT_EQ(ApiRequests().size(), 3u);  // first call, the 401, the retry
}

TEST_F(QuarantineTest, GetMachineActionFollowsTheActionToSucceeded) {
  StartPlugin();
  v1::QuarantineFileResponse created;
  ASSERT_TRUE(Quarantine(ValidRequest(), &created).ok());
  v1::GetMachineActionRequest get;
  get.set_id(created.action().id());
  v1::MachineAction action;
  const absl::Time give_up = absl::Now() + absl::Seconds(30);
  do {
    absl::SleepFor(absl::Milliseconds(200));
    grpc::ClientContext context;
    grpc::Status status = stub_->GetMachineAction(&context, get, &action);
    ASSERT_TRUE(status.ok()) << status.error_message();
    EXPECT_EQ(action.id(), created.action().id());
  } while (action.status() != v1::MACHINE_ACTION_STATUS_SUCCEEDED && absl::Now() < give_up);
  EXPECT_EQ(action.status(), v1::MACHINE_ACTION_STATUS_SUCCEEDED);
  EXPECT_EQ(action.defender_status(), "Succeeded");
}

TEST_F(QuarantineTest, GetMachineActionValidatesAndMapsNotFound) {
  StartPlugin();
  v1::GetMachineActionRequest get;
  v1::MachineAction action;
  {
    grpc::ClientContext context;
    get.set_id("../machines");
    grpc::Status status = stub_->GetMachineAction(&context, get, &action);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_EQ(ReadDetails(status).info.reason(), "INVALID_ACTION_ID");
  }
  EXPECT_TRUE(sandbox_->Requests().empty());
  {
    grpc::ClientContext context;
    get.set_id("00000000-0000-0000-0000-000000000000");
    grpc::Status status = stub_->GetMachineAction(&context, get, &action);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::NOT_FOUND);
  }
}

TEST_F(QuarantineTest, DefenderFaultsMapToActionableStatuses) {
  StartPlugin();
  struct Case {
    int http_status;
    std::string retry_after;
    grpc::StatusCode code;
    std::string reason;
  };
  const std::vector<Case> cases = {
      {403, "", grpc::StatusCode::PERMISSION_DENIED, "DEFENDER_FORBIDDEN"},
      {429, "120", grpc::StatusCode::RESOURCE_EXHAUSTED, "DEFENDER_THROTTLED"},
      {400, "", grpc::StatusCode::INVALID_ARGUMENT, "DEFENDER_BAD_REQUEST"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.http_status);
    sandbox::FaultRule rule;
    rule.method = "POST";
    rule.path_regex = "StopAndQuarantineFile";
    rule.status = c.http_status;
    rule.retry_after = c.retry_after;
    sandbox_->AddFault(rule);
    v1::QuarantineFileResponse response;
    grpc::Status status = Quarantine(ValidRequest(), &response);
    EXPECT_EQ(status.error_code(), c.code);
    Details details = ReadDetails(status);
    EXPECT_EQ(details.info.reason(), c.reason);
    EXPECT_EQ(details.info.metadata().at("http_status"), absl::StrCat(c.http_status));
    if (!c.retry_after.empty()) {
      ASSERT_TRUE(details.has_retry);
      EXPECT_EQ(details.retry.retry_delay().seconds(), 120);
    }
  }
  // Retried faults (5xx, dropped connections, malformed answers) are in
  // fault_matrix_test.cc.
}

TEST_F(QuarantineTest, HealthReportsServing) {
  StartPlugin();
  auto health = grpc::health::v1::Health::NewStub(channel_);
  for (const std::string service : {"", "defender.v1.ResponseService"}) {
    grpc::ClientContext context;
    grpc::health::v1::HealthCheckRequest request;
    request.set_service(service);
    grpc::health::v1::HealthCheckResponse response;
    ASSERT_TRUE(health->Check(&context, request, &response).ok()) << service;
    EXPECT_EQ(response.status(), grpc::health::v1::HealthCheckResponse::SERVING) << service;
  }
}

}  // namespace
}  // namespace defender
