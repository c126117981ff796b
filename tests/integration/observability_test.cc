// End-to-end: what operators see. A real gRPC client calls the in-process
// plugin, which goes through real libcurl and TLS to the sandbox; the test
// reads the plugin's JSON log lines from stderr and scrapes its /metrics
// over real HTTP.
#include <cstdio>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "defender/v1/response_service.grpc.pb.h"
#include "gmock/gmock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "server/config.h"
#include "server/log.h"
#include "server/plugin_server.h"
#include "tests/http_get.h"
#include "tests/integration/plugin_harness.h"
#include "tools/sandbox/sandbox.h"

namespace defender {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

constexpr char kMachine[] = "1e5bc9d7e413ddd7902c2932e418702b84d0cc07";
constexpr char kSha1[] = "87662bc3d60e4200ceaf7aae249d1c343f4b83c9";
constexpr char kSecret[] = "observability-secret-Q7$x";

// Scrape returns the body of GET http://127.0.0.1:port/metrics.
std::string Scrape(int port) {
  std::string body;
  EXPECT_EQ(testing::HttpGet(absl::StrCat("http://127.0.0.1:", port, "/metrics"), &body), 200);
  return body;
}

// RpcLines are the JSON log records of finished RPCs in `logs`.
std::vector<nlohmann::json> RpcLines(const std::string& logs) {
  std::vector<nlohmann::json> lines;
  for (absl::string_view line : absl::StrSplit(logs, '\n', absl::SkipEmpty())) {
    nlohmann::json record = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    EXPECT_FALSE(record.is_discarded()) << "not a JSON line: " << line;
    if (record.is_object() && record.contains("rpc")) lines.push_back(record);
  }
  return lines;
}

class ObservabilityTest : public ::testing::Test {
 protected:
  void SetUp() override {
    sandbox::SandboxOptions options;
    options.client_secret = kSecret;
    auto started = sandbox::Sandbox::Start(options);
    ASSERT_TRUE(started.ok()) << started.status();
    sandbox_ = *std::move(started);
    ca_file_ = absl::StrCat(::testing::TempDir(), "/obs-ca-", getpid(), ".pem");
    ASSERT_TRUE(sandbox_->WriteCaFile(ca_file_).ok());
    saved_log_ = GetLogOptions();
    absl::StatusOr<PluginConfig> config = testing::LoadTestConfig(
        {"--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0", "--log-format", "json"},
        {{"AZURE_TENANT_ID", "11111111-1111-1111-1111-111111111111"},
         {"AZURE_CLIENT_ID", "22222222-2222-2222-2222-222222222222"},
         {"AZURE_CLIENT_SECRET", kSecret},
         {"AZURE_AUTHORITY_HOST", sandbox_->base_url()},
         {"DEFENDER_API_URL", sandbox_->base_url()},
         {"DEFENDER_CA_FILE", ca_file_}});
    ASSERT_TRUE(config.ok()) << config.status();
    SetLogOptions(config->log);
    auto server = PluginServer::Start(*config);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    ASSERT_GT(server_->metrics_port(), 0);
    stub_ = v1::ResponseService::NewStub(grpc::CreateChannel(
        absl::StrCat("127.0.0.1:", server_->port()), grpc::InsecureChannelCredentials()));
  }

  void TearDown() override {
    stub_.reset();
    if (server_) server_->Shutdown(absl::Seconds(5));
    server_.reset();
    sandbox_.reset();
    std::remove(ca_file_.c_str());
    SetLogOptions(saved_log_);
  }

  grpc::Status Quarantine(const std::string& x_request_id, std::string* echoed_id) {
    v1::QuarantineFileRequest request;
    request.set_machine_id(kMachine);
    request.set_sha1(kSha1);
    request.set_comment("observability test");
    request.set_request_id("playbook-run-7");
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
    if (!x_request_id.empty()) context.AddMetadata("x-request-id", x_request_id);
    v1::QuarantineFileResponse response;
    grpc::Status status = stub_->QuarantineFile(&context, request, &response);
    auto it = context.GetServerInitialMetadata().find("x-request-id");
    if (echoed_id && it != context.GetServerInitialMetadata().end()) {
      *echoed_id = std::string(it->second.data(), it->second.size());
    }
    return status;
  }

  std::unique_ptr<sandbox::Sandbox> sandbox_;
  std::string ca_file_;
  LogOptions saved_log_;
  std::unique_ptr<PluginServer> server_;
  std::unique_ptr<v1::ResponseService::Stub> stub_;
};

TEST_F(ObservabilityTest, AQuarantineWritesOneJsonLineWithEveryFieldAnOperatorNeeds) {
  std::string echoed;
  ::testing::internal::CaptureStderr();
  grpc::Status status = Quarantine("soar-incident-42", &echoed);
  const std::string logs = ::testing::internal::GetCapturedStderr();
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(echoed, "soar-incident-42");  // the caller's id comes back
  EXPECT_THAT(logs, Not(HasSubstr(kSecret)));
  EXPECT_THAT(logs, Not(HasSubstr("Bearer")));
  std::vector<nlohmann::json> lines = RpcLines(logs);
  ASSERT_EQ(lines.size(), 1u) << logs;
  const nlohmann::json& line = lines[0];
  EXPECT_EQ(line["@level"], "info");
  EXPECT_EQ(line["@message"], "QuarantineFile OK");
  EXPECT_EQ(line["rpc"], "QuarantineFile");
  EXPECT_EQ(line["call_id"], "soar-incident-42");
  EXPECT_EQ(line["request_id"], "playbook-run-7");
  EXPECT_THAT(line["caller"].get<std::string>(), HasSubstr("127.0.0.1"));
  EXPECT_EQ(line["tenant"], "default");
  EXPECT_EQ(line["machine"], kMachine);
  EXPECT_EQ(line["file"], kSha1);
  EXPECT_EQ(line["code"], "OK");
  EXPECT_EQ(line["upstream_status"], 201);
  EXPECT_FALSE(line["action_id"].get<std::string>().empty());
  EXPECT_GE(line["latency_ms"].get<double>(), 0.0);
}

TEST_F(ObservabilityTest, ADefenderErrorIsLoggedWithItsStatusAndTrackingId) {
  grpc::ClientContext context;
  v1::GetMachineActionRequest request;
  request.set_id("00000000-0000-0000-0000-000000000000");
  v1::MachineAction action;
  ::testing::internal::CaptureStderr();
  grpc::Status status = stub_->GetMachineAction(&context, request, &action);
  const std::string logs = ::testing::internal::GetCapturedStderr();
  ASSERT_EQ(status.error_code(), grpc::StatusCode::NOT_FOUND) << status.error_message();
  std::vector<nlohmann::json> lines = RpcLines(logs);
  ASSERT_EQ(lines.size(), 1u) << logs;
  EXPECT_EQ(lines[0]["@level"], "warn");
  EXPECT_EQ(lines[0]["code"], "NOT_FOUND");
  EXPECT_EQ(lines[0]["reason"], "DEFENDER_NOT_FOUND");
  EXPECT_EQ(lines[0]["upstream_status"], 404);
  // The sandbox, like Defender, puts a tracking id in the error's "target".
  EXPECT_EQ(lines[0]["tracking_id"].get<std::string>().size(), 36u) << lines[0].dump();
  EXPECT_EQ(lines[0]["call_id"].get<std::string>().size(), 16u);  // generated
}

TEST_F(ObservabilityTest, MetricsCountRpcsUpstreamRequestsSlotsAndTokens) {
  ASSERT_TRUE(Quarantine("", nullptr).ok());
  ASSERT_TRUE(Quarantine("", nullptr).ok());  // the same request_id: replayed, not re-sent
  grpc::ClientContext bad_context;
  v1::QuarantineFileRequest bad;
  bad.set_machine_id("not-a-machine");
  v1::QuarantineFileResponse ignored;
  EXPECT_EQ(stub_->QuarantineFile(&bad_context, bad, &ignored).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);

  const std::string text = Scrape(server_->metrics_port());
  EXPECT_THAT(text, HasSubstr(R"(defender_plugin_rpcs_total{code="OK",method="QuarantineFile"} 2)"));
  EXPECT_THAT(text, HasSubstr(
                        R"(defender_plugin_rpcs_total{code="INVALID_ARGUMENT",method="QuarantineFile"} 1)"));
  EXPECT_THAT(text, HasSubstr(R"(defender_plugin_rpcs_in_flight{method="QuarantineFile"} 0)"));
  EXPECT_THAT(text, HasSubstr(R"(defender_plugin_rpc_duration_seconds_count{method="QuarantineFile"} 3)"));
  EXPECT_THAT(text, HasSubstr(R"(defender_plugin_upstream_requests_total{endpoint="StopAndQuarantineFile",result="201"} 1)"));
  EXPECT_THAT(text, HasSubstr(R"(defender_plugin_upstream_requests_total{endpoint="token",result="200"} 1)"));
  EXPECT_THAT(text, HasSubstr(R"(defender_plugin_rate_limiter_slots_total{api="StopAndQuarantineFile",tenant="default"} 1)"));
  EXPECT_THAT(text, HasSubstr(R"(defender_plugin_token_refreshes_total{tenant="default"} 1)"));
  EXPECT_THAT(text, Not(HasSubstr("token_refresh_failures_total{")));
  EXPECT_THAT(text, Not(HasSubstr(kSecret)));
  EXPECT_THAT(text, Not(HasSubstr(kMachine)));  // no ids in labels
}

TEST_F(ObservabilityTest, ARefusedTokenIsCountedAsARefreshFailureWithItsReason) {
  sandbox::FaultRule refuse;
  refuse.method = "POST";
  refuse.path_regex = "/oauth2/v2.0/token$";
  refuse.times = -1;
  refuse.status = 401;
  refuse.body = R"({"error":"invalid_client","error_description":"AADSTS7000215: Invalid )"
                R"(client secret provided.","error_codes":[7000215]})";
  sandbox_->AddFault(refuse);
  EXPECT_EQ(Quarantine("", nullptr).error_code(), grpc::StatusCode::UNAUTHENTICATED);
  const std::string text = Scrape(server_->metrics_port());
  EXPECT_THAT(text, HasSubstr(R"(defender_plugin_token_refreshes_total{tenant="default"} )"));
  EXPECT_THAT(text, HasSubstr(R"(defender_plugin_token_refresh_failures_total{reason="TOKEN_REQUEST_REJECTED",tenant="default"} 1)"));
  EXPECT_THAT(text, HasSubstr(R"(defender_plugin_upstream_requests_total{endpoint="token",result="401"} 1)"));
}

}  // namespace
}  // namespace defender
